"""The generator version, recorded in every stimulus store (importing it loads nothing else)."""

# 2.0: face model 2 (FACS expressions, sex dimorphism, hair styles, teeth, torso, norms)
# 2.1: the mouth opens above an expression intensity of 1/8 (OPENING_AUS); laughing, disgust and fear open wider
# 2.2: normalised designs (identity codes once per person), continuous factors float32, crossed designs
#      drawn in blocks, sample-major
# 2.3: ambient occlusion of the mean face baked into the albedo (eye sockets, nostrils, under the jaw); eyes
#      and lips with a weaker specular sheen (irises show their colour instead of a milky highlight); colour
#      variation (identity texture, sex, age, creases) scaled to each ethnic group's skin, so dark faces keep
#      their hue (no olive lips); lip colour varies redder/browner; the beard shadow covers the jaw below the
#      cheek line, cool grey instead of a mauve stain on the chin
# 2.4: hair painted on the scalp thins out over 7 mm below the hairline (and 5 mm lower at the temples and
#      nape), so the hairline seen is a soft gradient, not the jagged line where the hair shell crosses the skin;
#      the upper lids cover the top of the irises and the lower lids their bottom (no staring ring of white);
#      darker pupils (a weaker sheen on the eyes); the hair shell as fine as the skin at full detail (its
#      outline in 3-5 mm steps, not 1 cm), long hair's curtain clear of the ears and thinning over 2 cm at its ends
# 2.5: the hair shell sinks 1.5 cm under the skin round the ears where no style grows hair (short hair's
#      shell showed through the ears' bowl and front wall as a dark box: a ray grid's stretched cells at a
#      wall cross another grid's; women's short hair now clears the upper ear about 1 mm higher); long hair
#      has no sex difference (a man's smaller cap cut a ledge round the curtain: the sex difference is now
#      the short_hair_sex row), hangs over the head as if it had no ears (no bulge over them) and joins its
#      cap without a crease
# 2.6: the sexes told apart by the face, not the hair (blind raters judged gender by hair length alone):
#      women's brows higher, arched and thinner, lined lashes and a shaded lid, redder lips; men's heavier
#      brow ridge over deeper-set eyes, flatter cheeks, a more prominent nose and chin, a squarer jaw angle;
#      the beard shadow thin on the cheeks and full on the chin and over the upper lip (no grey slab with an
#      edge in three-quarter view); anger knits the brows (AU4 pulls their heads down and together most) and
#      presses the lips (AU17); fear stretches the mouth sideways (AU20), wider than surprise's oval;
#      disgust sneers (the upper lip raised over barely parted lips, brows lowered, cheeks raised)
#      instead of opening the mouth; the hair shell thins over 2 cm round the hairline (5 mm before) and long
#      hair's front edge over twice the angle (no saw-tooth of grid cells along either edge)
# 2.7: no skin folds through itself under an expression: which lip a skin ring follows is its ring's, not its
#      height's (near the mouth corners, where the lips curve above the meeting line, a lower-lip ring took the
#      upper lip's share and was overtaken by the rings round it when the jaw dropped: folds in fear, surprise
#      and happiness); the skin under the brows follows AU4's descent over 2 cm (the brows' heads folded into
#      the root of the nose in anger), the lids moving down and in with them; AU12 pulls the mouth corners
#      as far over a wider patch of skin (the cheek over a laughing mouth's corner folded into itself); the model
#      is built on one BLAS thread (a build on 2 threads gave bases up to 2e-9 off: an SVD's last bits)
# 2.8: a neutral mouth is level (its corners sat 3.6 mm above its middle, a smile on every neutral face,
#      read as happiness by blind raters: the lips' meeting line was levelled only part-way towards the
#      corners); each skin column takes its own lip edge's share of the jaw's motion (no step at the corners
#      or under the chin); men's brows come down along their whole length (lowered at the arch only, their
#      heads stood high: the oblique brow of sadness on a neutral face); a broader neck (32 cm round, 30 cm
#      before: a thin tube under the jaw), a man's broader and deeper than a woman's (36 and 31 cm round at
#      gender_strength 1; 2.7 gave both sexes the same neck), with an Adam's apple, and a sharper angle
#      between jaw and neck; AU12 lifts the mouth corners 11 mm instead of 7.5, over a taller patch of cheek
#      (1.8 cm above and below the corner, 1.4 before: the cheek folded on 1 face in 80); from the level
#      mouth a laugh's corners rose 9.2 mm above the lips' middle, against 12.5 mm in 2.7, and raters read it
#      as fear; now 12.4 mm (averaged over 20 people; neutral -0.4 mm, 2.7 +3.6; sadness -5.5, 2.7 +0.3)
# 2.9: disgust reads as disgust (blind raters named it 1-2 times in 6, mostly as fear): the nose wrinkles in
#      creases 4.5 mm apart across its root and down its sides (2.5 mm before, finer than the mesh: invisible),
#      its wings rise and flare, the corners come down and the lower lip is pushed up (AU15, AU17: the mouth's
#      inverted U) under the raised upper lip, the brows come lower (AU4 at 1) and the raised cheeks narrow the
#      eyes a little more (AU6, AU7 at 0.6; a first version with AU6 0.8, AU7 0.7, AU9 1.2 and AU10 1.3 folded
#      the lids or the philtrum through themselves on 4 faces in 200); half the Adam's apple is in the mean
#      face, so a woman's throat no longer gets half of it inwards (a 1.2 mm dip at gender_strength 1) and a
#      man's has all of it (2.4 mm on the 100-ring mesh; 1.2 before)
# 2.10: the nose's width is a scaling about the midline, ramping up over 1.5 cm either side of it (over 5 mm
#      before: a narrow nose pinched the columella's two sides through each other, on 1 woman in 200 in a
#      random draw and 2 in 200 disgusted faces; a 3-SD identity now closes about half (0.53) of any gap across
#      the midline, where it closed 2.1 times the columella's); the identity basis's principal components
#      rotate with the changed field, so an identity code now gives another person (the same distribution);
#      surprise arches the brows, its tails rising highest (AU1 0.6, AU2 1.7, AU5 0.9; AU1 and AU2 at 1 raised
#      the heads most, the oblique brow of fear: blind raters named 2 surprised faces in 3 fear);
#      the skin under the chin follows the jaw down the throat more gradually (surprise's 4 cm drop pushed it
#      into the throat of 31 in 1,000 surprised faces with 2.9, 30 of them men: a man's throat stands further
#      forward)
# 2.11: men's beard shadow is stubble: a fixed grain (1 +- 0.6 per point) of darker hairs on the jaw, chin
#      and upper lip, smooth down the neck (2.10's even grey shadow: raters called 14-17 of 17 long-haired men
#      women); the identity basis is unchanged (identity codes give the same people as in 2.10)
GENERATOR_VERSION = "2.11"
