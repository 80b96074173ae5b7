"""The generator version, recorded in every stimulus store (importing it loads nothing else)."""

# 2.0: face model 2 (FACS expressions, sex dimorphism, hair styles, teeth, torso, norms)
# 2.1: the mouth opens above an expression intensity of 1/8 (OPENING_AUS); laughing, disgust and fear open wider
# 2.2: normalised designs (identity codes once per person), continuous factors float32, crossed designs
#      drawn in blocks, sample-major
GENERATOR_VERSION = "2.2"
