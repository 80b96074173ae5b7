"""The generative factors of the face model: names, kinds, units and ranges.

Every stimulus is a pure function of one row of a factor table whose columns are
the factors below (plus the identity codes ``shape_coeff`` and ``texture_coeff``).
"""

from __future__ import annotations

from dataclasses import dataclass

EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "sadness",
)
GENDERS: tuple[str, ...] = ("female", "male")
ETHNICITIES: tuple[str, ...] = ("A", "B", "C")
HAIR_STYLES: tuple[str, ...] = ("short", "long")


@dataclass(frozen=True)
class Factor:
    """One generative factor.

    ``kind`` is ``"continuous"`` or ``"categorical"``; ``intrinsic`` factors
    belong to a person (drawn once per identity in the identity pool), the
    others to a picture of that person. ``bounds`` are the hard limits the
    model accepts for a continuous factor, ``levels`` the allowed categories
    of a categorical one.
    """

    name: str
    kind: str
    unit: str
    description: str
    intrinsic: bool = False
    bounds: tuple[float, float] | None = None
    levels: tuple[str, ...] | None = None


FACTORS: dict[str, Factor] = {
    f.name: f
    for f in (
        Factor("identity", "categorical", "", "identity index into the identity pool", True),
        Factor("gender", "categorical", "", "gender category", True, levels=GENDERS),
        Factor(
            "gender_strength", "continuous", "", "how strongly the gender shows (0 = androgynous)",
            True, bounds=(0.0, 1.0),
        ),
        Factor("ethnicity", "categorical", "", "synthetic population group (mean shape and texture)",
               True, levels=ETHNICITIES),
        Factor("age", "continuous", "years", "age in years (jaw, cheeks, skin texture)", True,
               bounds=(15.0, 90.0)),
        Factor("hair_style", "categorical", "", "hair style (short: cropped; long: to the shoulders)", True,
               levels=HAIR_STYLES),
        Factor("expression", "categorical", "", "facial expression", levels=EXPRESSIONS),
        Factor("expression_intensity", "continuous", "", "expression strength (0 = neutral)",
               bounds=(0.0, 1.0)),
        Factor("yaw", "continuous", "deg", "rotation about the vertical axis (+ = turn to viewer's right)",
               bounds=(-90.0, 90.0)),
        Factor("pitch", "continuous", "deg", "rotation about the horizontal axis (+ = look up)",
               bounds=(-60.0, 60.0)),
        Factor("roll", "continuous", "deg", "in-plane rotation (+ = counter-clockwise)",
               bounds=(-90.0, 90.0)),
        Factor("light_azimuth", "continuous", "deg", "light direction about the vertical axis (+ = from viewer's right)",
               bounds=(-90.0, 90.0)),
        Factor("light_elevation", "continuous", "deg", "light direction above the horizon (+ = from above)",
               bounds=(-90.0, 90.0)),
        Factor("light_ambient", "continuous", "", "ambient share of the light (1 = flat lighting)",
               bounds=(0.0, 1.0)),
        Factor("scale", "continuous", "", "size of the head relative to the default framing",
               bounds=(0.3, 2.0)),
        Factor("shift_x", "continuous", "image width", "horizontal translation (+ = right)",
               bounds=(-0.5, 0.5)),
        Factor("shift_y", "continuous", "image height", "vertical translation (+ = up)",
               bounds=(-0.5, 0.5)),
        Factor("background", "continuous", "", "background grey level", bounds=(0.0, 1.0)),
    )
}

INTRINSIC: tuple[str, ...] = tuple(n for n, f in FACTORS.items() if f.intrinsic)
CATEGORICAL: tuple[str, ...] = tuple(n for n, f in FACTORS.items() if f.kind == "categorical")
CONTINUOUS: tuple[str, ...] = tuple(n for n, f in FACTORS.items() if f.kind == "continuous")
