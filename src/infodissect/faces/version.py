"""The generator version, recorded in every stimulus store (importing it loads nothing else)."""

GENERATOR_VERSION = "2.0"  # 2.0: face model 2 (FACS expressions, sex dimorphism, hair styles, teeth, torso, norms)
