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
GENERATOR_VERSION = "2.3"
