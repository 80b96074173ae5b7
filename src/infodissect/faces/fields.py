"""Displacement fields of the face model: identity, action units, sex, ethnicity, age.

Every field is evaluated at per-vertex *anchors* (``p``, (V, 3)): the vertex itself on
the skin, the eyeball's centre for an eyeball, a point of the jaw for the teeth, the skin
point under a hair vertex, so rigid parts move with the skin they sit in. Amplitudes are
in decimetres at one standard deviation (identity) or at full strength (action units at
FACS intensity E, sex at gender_strength 1, age per 40 years).

The mouth opens along a slit: ``split`` (V,) in [0, 1] is 0 on the skin rings above the
upper lip's edge, 1 on those below the lower lip's edge, and 1/2 on both lip edges outside
the mouth corners, so a field that moves the lower face (``lower``) and one that moves the
upper lip (``upper``) part the lips inside the mouth and nowhere else.
"""

from __future__ import annotations

import numpy as np

from .mesh import (EYE_CENTRE, HAIR, LOWER_TEETH, MOUTH_HALF_WIDTH, MOUTH_Y, NECK, SKIN, TORSO, UPPER_TEETH, Template,
                   mirror, neck_coords)

# Facial action units (FACS) of each expression's prototype, with their weights.
# At full intensity the mouth is open as at the apex of a laugh (happiness), of surprise (the jaw dropped
# into an oval) and of fear (the lips stretched sideways and parted); disgust wrinkles the nose (AU9) and
# bares the upper teeth under a raised upper lip, with the lips barely parted, their corners pulled down and
# the lower lip pushed up (AU15, AU17: the mouth's inverted U), the brows lowered and the eyes narrowed by the
# raised cheeks, and anger presses the lips together (AU17, AU23) under knitted brows: the prototypes people
# name most reliably (Ekman & Friesen 1978; Matsumoto & Ekman 2004). Surprise raises the whole brow in an
# arch, its tail most (AU2 over AU1); with AU1 and AU2 at 1 its heads rose highest, the oblique brow of fear
# and worry, and blind raters named 2 surprised faces in 3 fear.
EXPRESSION_AUS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happiness": {"AU6": 1.0, "AU12": 1.0, "AU25": 1.0, "AU26": 0.8},
    "surprise": {"AU1": 0.6, "AU2": 1.7, "AU5": 0.9, "AU26": 0.5, "AU27": 0.9},
    "fear": {"AU1": 1.0, "AU2": 0.6, "AU4": 0.7, "AU5": 1.0, "AU20": 1.6, "AU25": 1.0, "AU26": 1.0, "AU27": 0.4},
    "disgust": {"AU4": 1.0, "AU6": 0.6, "AU7": 0.6, "AU9": 1.0, "AU10": 1.0, "AU15": 0.6, "AU17": 0.6,
                "AU25": 0.35},
    "anger": {"AU4": 1.3, "AU5": 0.7, "AU7": 1.0, "AU17": 0.7, "AU23": 1.0},
    "sadness": {"AU1": 1.0, "AU4": 0.8, "AU15": 1.0, "AU17": 0.5},
}
# The action units that open the mouth, and the expression intensity at which they begin: below it the
# lips stay closed (a closed-lip smile), above it they open in proportion, fully at intensity 1; every
# other action unit scales with the intensity itself.
OPENING_AUS: tuple[str, ...] = ("AU25", "AU26", "AU27")
OPENING_ONSET = 0.125


def opening(intensity):
    """How far the mouth-opening action units act at an expression ``intensity`` (array or tensor):
    0 up to :data:`OPENING_ONSET`, then linear to 1 at intensity 1."""
    return ((intensity - OPENING_ONSET) / (1.0 - OPENING_ONSET)).clip(0.0, 1.0)


AU_NAMES: dict[str, str] = {
    "AU1": "inner brow raiser", "AU2": "outer brow raiser", "AU4": "brow lowerer", "AU5": "upper lid raiser",
    "AU6": "cheek raiser", "AU7": "lid tightener", "AU9": "nose wrinkler", "AU10": "upper lip raiser",
    "AU12": "lip corner puller", "AU15": "lip corner depressor", "AU17": "chin raiser", "AU20": "lip stretcher",
    "AU23": "lip tightener", "AU25": "lips part", "AU26": "jaw drop", "AU27": "mouth stretch",
}


def bump(p: np.ndarray, c, r, below: float | None = None) -> np.ndarray:
    """A Gaussian bump exp(-|(p - c) / r|^2), with radius ``below`` in y under its centre if given."""
    r = np.broadcast_to(np.asarray(r, dtype=float), (3,))  # one radius, or one per axis
    ry = r[1] if below is None else np.where(p[..., 1] < c[1], below, r[1])
    return np.exp(-(((p[..., 0] - c[0]) / r[0]) ** 2 + ((p[..., 1] - c[1]) / ry) ** 2 + ((p[..., 2] - c[2]) / r[2]) ** 2))


def _sgnx(p: np.ndarray, w: float = 0.05) -> np.ndarray:
    """A smooth sign of x: +1 on the subject's left, -1 on the right."""
    return np.tanh(p[:, 0] / w)


def _vec(weight: np.ndarray, x=0.0, y=0.0, z=0.0) -> np.ndarray:
    """(V, 3): per-vertex ``weight`` times a vector whose components may be per-vertex."""
    n = len(weight)
    comp = [np.broadcast_to(np.asarray(c, dtype=float), (n,)) for c in (x, y, z)]
    return weight[:, None] * np.stack(comp, -1)


def _lateral(p: np.ndarray, weight: np.ndarray, amount: float, width: float = 0.05) -> np.ndarray:
    """Motion away from the midline (towards it for ``amount`` < 0), ramping up over ``width`` either side of
    it: a field that acts on the midline itself (the nose's width) needs a ramp as wide as the feature, or
    narrowing it folds the skin on the midline through itself."""
    return _vec(weight, x=_sgnx(p, width) * amount)


def mouth_profile(x: np.ndarray) -> np.ndarray:
    """How open the lips part at |x| (1 at the centre, 0 at and beyond the corners)."""
    return np.sqrt(np.clip(1.0 - (np.asarray(x) / MOUTH_HALF_WIDTH) ** 2, 0.0, 1.0))


def lip_split(t: Template, p: np.ndarray) -> np.ndarray:
    """(V,) how much of the lower face's motion each vertex follows: 0 on the skin rings above the
    upper lip's edge, 1 on those below the lower lip's edge (away from the mouth: the fall-off is
    counted from the meeting line's height on the ring's own side), with the lip edges and cavity
    rings taking their own side inside the mouth.

    At the mouth corners both lip edges take 1/2 and the skin around them moves
    progressively (falling off over about 2 cm above and below), so that even a jaw
    opening of several centimetres stretches the skin there without folding it; above
    the upper lip's edge the split never exceeds the edge's, below the lower lip's edge
    it never falls under it.
    """
    above = _above_lips(t)
    prof = mouth_profile(p[:, 0]) * (p[:, 2] > 0.5)
    # A skin column takes its own lip edge's share: the profile is steep at the corners, and a column
    # whose vertices straddle the corner's x would otherwise give the rings above a corner more of the
    # jaw's motion than the corner itself.
    g = t.grid("skin")
    grid = np.arange(g.start, g.start + g.rings * g.segments)
    col = (grid - g.start) % g.segments
    # (The four mouth rings, in ``~above``, take the lower edge's profile: they share its longitudes and
    # anchors, so it equals their own.)
    for ring, side in ((t.mouth_rings[3], above[grid]), (t.mouth_rings[0], ~above[grid])):
        prof[grid[side]] = prof[t.ring(ring)[col[side]]]
    dy = p[:, 1] - MOUTH_Y
    fade = np.exp(-((np.where(above, dy.clip(0.0, None), dy.clip(None, 0.0)) / 0.2) ** 2))
    upper_edge, lower_edge = 0.5 - 0.5 * prof, 0.5 + 0.5 * prof
    split = np.where(above, upper_edge * fade, 1.0 - (1.0 - lower_edge) * fade)
    lower, floor, roof, upper = t.mouth_ring_vertices()
    for ring, edge in ((lower, lower_edge), (floor, lower_edge), (roof, upper_edge), (upper, upper_edge)):
        split[ring] = edge[ring]
    split[t.kind == UPPER_TEETH] = 0.0
    split[t.kind == LOWER_TEETH] = 1.0
    split[(t.kind != SKIN) & (t.kind != UPPER_TEETH) & (t.kind != LOWER_TEETH)] = 0.0
    return split


def _above_lips(t: Template) -> np.ndarray:
    """(V,) bool: the skin vertices on the rings above the upper lip's edge and the crown's pole (the
    skin grid's rings run up from the base of the neck). Which lip a vertex belongs to is its ring's,
    not its height's: near the corners the lips curve above the meeting line's height, and a
    lower-lip ring taken for an upper one there stays behind when the jaw drops while the rings
    round it follow, folding the lip over itself."""
    g = t.grid("skin")
    above = np.zeros(len(t.vertices), bool)
    above[t.ring(t.mouth_rings[3] + 1)[0]:g.start + g.rings * g.segments] = True
    above[g.start + g.rings * g.segments + 1] = True  # the north pole
    return above


def jaw_region(p: np.ndarray) -> np.ndarray:
    """(V,) how much of the mandible's motion a point follows (the lower face, tapering down the throat; not the
    ears or the back of the neck)."""
    lateral = np.exp(-((p[:, 0] / 0.5) ** 4))
    # The face follows the jaw down to the chin, the skin under it gradually, over the throat: with the same
    # fall under the chin as above it (from 0.6 to 0.2 over the 2 cm under it, 2.9), the dropped chin pushed the
    # skin under it into a man's throat, which stands further forward than a woman's (surprise's 4 cm drop: 31
    # in 1,000 surprised faces, 30 of them men). (The ramp's slope steps at the chin; a smooth blend of the two
    # widths changed at most 7 pixels of a 224 px portrait by more than 8 grey levels: no visible crease.)
    d = p[:, 1] + 1.1
    below_chin = 1.0 / (1.0 + np.exp(-d / np.where(d > 0, 0.13, 0.2)))
    front = 1.0 / (1.0 + np.exp(-(p[:, 2] + 0.05) / 0.08))
    return lateral * below_chin * front


def _along_rays(field: np.ndarray, p: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """The part of a displacement along each skin (and hair) point's ray from the head centre.

    The skin is a height field over those rays: motion along them keeps every face's
    orientation, where sideways motion tips faces on walls nearly parallel to the rays
    (the nape, under the jaw), so the head-wide fields act along the rays there.
    """
    ray = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-9)
    along = np.sum(field * ray, axis=1, keepdims=True) * ray
    return np.where(np.isin(kind, (SKIN, HAIR))[:, None], along, field)


def anatomical_fields(p: np.ndarray, kind: np.ndarray) -> dict[str, np.ndarray]:
    """Named identity deformations at one standard deviation, evaluated at anchors ``p``.

    Each moves the anthropometric distance it is named after (face width at the zygomatic
    arches, jaw width at the gonia, face height nasion-gnathion, eye spacing, eye size,
    nose width and height, mouth width, ...); :func:`.model.calibrate_shape` scales them
    so that sampled identities match Farkas' norms.
    """
    m = mirror(p)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    zero = np.zeros_like(x)
    head = kind != TORSO
    face = 1.0 / (1.0 + np.exp(-(z - 0.05) / 0.12)) * head
    ec = EYE_CENTRE
    f = {
        "head_width": _along_rays(np.stack([0.03 * x * head, zero, zero], -1), p, kind),
        "head_length": _along_rays(np.stack([zero, zero, 0.03 * (z + 0.14) * head], -1), p, kind),
        "head_height": _along_rays(np.stack([zero, 0.03 * np.clip(y, 0, None) * head, zero], -1), p, kind),
        "face_width": _lateral(p, bump(m, (0.62, -0.05, 0.25), (0.2, 0.3, 0.3)), 0.03),
        "jaw_width": _lateral(p, bump(m, (0.48, -0.8, 0.05), (0.2, 0.25, 0.35)), 0.03),
        "lower_face_height": _vec(face / (1 + np.exp((y + 0.45) / 0.1)) * (y > -1.6), y=-0.03),
        "chin_height": _vec(bump(p, (0, -1.0, 0.45), (0.25, 0.15, 0.25)), y=-0.02),
        "chin_protrusion": _vec(bump(p, (0, -0.95, 0.5), (0.2, 0.15, 0.22)), z=0.025),
        "chin_width": _lateral(p, bump(m, (0.14, -0.95, 0.45), (0.12, 0.14, 0.2)), 0.02),
        "cheekbones": bump(m, (0.45, -0.1, 0.52), (0.16, 0.13, 0.16))[:, None] * np.stack(
            [_sgnx(p) * 0.015, zero, np.full_like(x, 0.015)], -1),
        "cheek_fullness": bump(m, (0.42, -0.48, 0.5), (0.18, 0.18, 0.2))[:, None] * np.stack(
            [_sgnx(p) * 0.012, zero, np.full_like(x, 0.012)], -1),
        "brow_ridge": _vec(bump(p, (0, 0.28, 0.75), (0.42, 0.07, 0.12)), z=0.02),
        "forehead_height": _vec(bump(p, (0, 0.75, 0.55), (0.6, 0.25, 0.4)) * (y > 0.3), y=0.025),
        "forehead_slope": _vec(bump(p, (0, 0.6, 0.6), (0.6, 0.25, 0.35)), z=0.025),
        "eye_spacing": _lateral(p, bump(m, ec, (0.16, 0.13, 0.3)), 0.012),
        "eye_size": bump(m, ec + [0, 0, 0.1], (0.2, 0.12, 0.2))[:, None] * np.stack(
            [_sgnx(p) * 0.008 * (m[:, 0] - ec[0]) / 0.15, 0.008 * (y - ec[1]) / 0.05, zero], -1),
        "eye_height": _vec(bump(m, ec, (0.2, 0.15, 0.3)), y=0.015),
        "eye_depth": _vec(bump(m, ec, (0.15, 0.12, 0.3)), z=-0.015),
        # A scaling about the midline (a ramp as wide as the nose): with a 5 mm ramp, a narrow nose pinched
        # the columella's two sides through each other (2.9: 1 woman in 200).
        "nose_width": _lateral(p, bump(p, (0, -0.35, 0.95), (0.15, 0.09, 0.16)), 0.015, width=0.15),
        "nose_height": _vec(bump(p, (0, -0.3, 1.0), (0.2, 0.14, 0.25)), y=-0.02),
        "nose_protrusion": _vec(bump(p, (0, -0.22, 1.02), (0.14, 0.18, 0.2)), z=0.025),
        "nose_bridge": _vec(bump(p, (0, 0.0, 0.88), (0.1, 0.14, 0.12)), z=0.02),
        "nose_tip": bump(p, (0, -0.3, 1.1), (0.09, 0.07, 0.1))[:, None] * np.stack([zero, zero + 0.004, zero + 0.012], -1),
        "mouth_width": _lateral(p, bump(m, (MOUTH_HALF_WIDTH, MOUTH_Y, 0.82), (0.12, 0.1, 0.15)), 0.02),
        "upper_lip": _vec(bump(p, (0, MOUTH_Y + 0.05, 0.9), (0.24, 0.05, 0.12)), y=0.006, z=0.012),
        "lower_lip": _vec(bump(p, (0, MOUTH_Y - 0.06, 0.88), (0.22, 0.05, 0.12)), y=-0.006, z=0.012),
        "mouth_height": _vec(bump(p, (0, MOUTH_Y, 0.85), (0.3, 0.14, 0.25)), y=0.015),
        "ear_size": 0.12 * (m - [0.73, 0.0, -0.12]) * bump(m, (0.73, 0.0, -0.12), (0.16, 0.34, 0.24))[:, None]
        * np.stack([np.sign(x + 1e-12), np.ones_like(x), np.ones_like(x)], -1),
        "ear_protrusion": _lateral(p, bump(m, (0.75, 0.0, -0.2), (0.14, 0.3, 0.2)), 0.025),
    }
    return f


def random_fields(p: np.ndarray, n: int, rng: np.random.Generator, surface: np.ndarray) -> list[np.ndarray]:
    """Random smooth displacement fields along the rays: symmetric sums of Gaussian bumps on the face.

    The skin is a height field over rays from the head centre, and motion along the rays
    keeps every skin face's orientation, so random identity fields never tip faces.
    """
    front = surface[(surface[:, 2] > 0.2) & (surface[:, 1] > -1.1)]
    ray = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-9)
    out = []
    for _ in range(n):
        acc = np.zeros(len(p))
        for _ in range(3):
            c = front[rng.integers(len(front))]
            radius = rng.uniform(0.15, 0.4)
            amp = rng.normal()
            acc += amp * bump(p, c, radius)
            if rng.random() < 0.85:  # mostly bilateral, like faces
                acc += amp * bump(p, c * [-1, 1, 1], radius)
        out.append(0.008 * acc[:, None] * ray)
    return out


def action_unit_fields(p: np.ndarray, split: np.ndarray, kind: np.ndarray) -> dict[str, np.ndarray]:
    """Facial action units at FACS intensity E (maximal), as displacement fields.

    Amplitudes follow measured facial motion: brows rise by about 1 cm (AU1, AU2) and fall
    by about 8 mm, their heads most (AU4), mouth corners move 11 mm up and 6 mm out (AU12: beyond
    the 7-8 mm of measured smiles, as posed prototypes go, so that a smile reads as one from a level
    neutral mouth), the chin drops about 2 cm (AU26) and, mouth stretched wide open, 3.5 cm (AU27); ``split`` keeps the upper lip
    still while the lower face moves. Only the skin (and the hair on it) moves with the
    muscles; the lower teeth follow the jaw (AU26, AU27), the eyeballs and upper teeth stay.
    """
    out = _action_units(p, split)
    still = ~np.isin(kind, (SKIN, HAIR))
    for name, f in out.items():
        f[still & ~((kind == LOWER_TEETH) & (name in ("AU26", "AU27")))] = 0.0
    return out


def _action_units(p: np.ndarray, split: np.ndarray) -> dict[str, np.ndarray]:
    """Displacement fields of each action unit at full intensity (see :func:`action_unit_fields`)."""
    m = mirror(p)
    x, y = p[:, 0], p[:, 1]
    ec = EYE_CENTRE
    upper, lower = 1.0 - split, split
    prof = mouth_profile(x)
    corner = (MOUTH_HALF_WIDTH, MOUTH_Y, 0.78)
    upper_lid = bump(m, ec + [0.02, 0.055, 0.1], (0.16, 0.045, 0.12)) * (y > ec[1] - 0.01)
    lower_lid = bump(m, ec + [0.02, -0.05, 0.1], (0.15, 0.035, 0.12)) * (y < ec[1] + 0.01)
    forehead = 1.0 / (1.0 + np.exp(-(y - 0.22) / 0.05))
    upper_lip = bump(p, (0, MOUTH_Y + 0.05, 0.88), (0.3, 0.1, 0.2)) * upper
    lower_lip = bump(p, (0, MOUTH_Y - 0.06, 0.86), (0.28, 0.09, 0.2)) * lower
    jaw = jaw_region(p) * lower
    return {
        "AU1": _vec(bump(m, (0.13, 0.33, 0.82), (0.12, 0.2, 0.2)) * forehead, y=0.09),
        "AU2": _vec(bump(m, (0.4, 0.33, 0.7), (0.13, 0.2, 0.2)) * forehead, y=0.08),
        # the corrugator pulls the brows' heads down and together most: an oblique, knitted brow; the skin
        # under them (the lids, the root of the nose) follows over 2 cm, so they do not fold into it: the lids
        # move 2-4 mm down and in with them round the still eyeball, the opening narrowing by about 1 mm
        "AU4": bump(m, (0.18, 0.28, 0.8), (0.15, 0.1, 0.14), below=0.2)[:, None] * np.stack(
            [-_sgnx(p) * 0.04, np.full_like(x, -0.06), np.full_like(x, 0.01)], -1)
        + bump(m, (0.1, 0.28, 0.85), (0.08, 0.07, 0.12), below=0.2)[:, None] * np.stack(
            [-_sgnx(p) * 0.02, np.full_like(x, -0.045), np.full_like(x, 0.008)], -1),
        "AU5": _vec(upper_lid, y=0.03),
        "AU6": _vec(bump(m, (0.4, -0.2, 0.6), (0.16, 0.13, 0.16)), y=0.04, z=0.012) + _vec(lower_lid, y=0.022),
        "AU7": _vec(lower_lid, y=0.028) + _vec(upper_lid, y=-0.01),
        # the nose's sides and wings rise, the wings flaring 1.2 mm, and the brows' heads come down
        "AU9": _vec(bump(m, (0.07, -0.2, 0.96), (0.08, 0.16, 0.12)), y=0.035)
        + _lateral(p, bump(m, (0.12, -0.3, 0.85), (0.06, 0.06, 0.1)), 0.012)
        + _vec(bump(m, (0.1, 0.27, 0.82), (0.1, 0.08, 0.12)), y=-0.03) + _vec(upper_lip, y=0.02),
        "AU10": _vec(upper_lip * (0.5 + 0.5 * bump(m, (0.12, MOUTH_Y, 0.85), (0.1, 0.2, 0.3))), y=0.05, z=0.006),
        "AU12": bump(m, corner, (0.16, 0.18, 0.2))[:, None] * np.stack(
            [_sgnx(p) * 0.06, np.full_like(x, 0.11), np.full_like(x, -0.03)], -1)
        + _vec(bump(m, (0.4, -0.38, 0.62), (0.18, 0.18, 0.2)), y=0.02, z=0.01),
        "AU15": _vec(bump(m, (MOUTH_HALF_WIDTH, MOUTH_Y - 0.02, 0.78), (0.1, 0.08, 0.14)), y=-0.055)
        + _lateral(p, bump(m, (MOUTH_HALF_WIDTH, MOUTH_Y, 0.78), (0.1, 0.08, 0.14)), -0.008),
        "AU17": _vec(bump(p, (0, -0.92, 0.55), (0.2, 0.14, 0.2)) * lower, y=0.02, z=0.008),
        "AU20": bump(m, corner, (0.11, 0.1, 0.15))[:, None] * np.stack(
            [_sgnx(p) * 0.07, np.full_like(x, -0.015), np.full_like(x, -0.02)], -1),
        "AU23": _vec(bump(p, (0, MOUTH_Y, 0.9), (0.24, 0.1, 0.15)) * (1.0 - 0.9 * prof * bump(p, (0, MOUTH_Y, 0.9), (1, 0.015, 1))),
                     z=-0.025) + _lateral(p, bump(m, corner, (0.1, 0.1, 0.15)), -0.02),
        "AU25": _vec(upper_lip * prof, y=0.028) + _vec(lower_lip * prof, y=-0.04),
        "AU26": _vec(jaw, y=-0.2, z=-0.06),
        "AU27": _vec(jaw, y=-0.35, z=-0.1) + _lateral(p, bump(m, (MOUTH_HALF_WIDTH, MOUTH_Y, 0.78), (0.1, 0.1, 0.15)), -0.02),
    }


def sex_fields(f: dict[str, np.ndarray], p: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """The male-minus-female shape difference at gender_strength 1 (beyond the calibrated distances):
    a heavier brow ridge, lower and flatter brows over deeper-set eyes, a more sloping forehead, flatter
    cheeks, a more prominent nose, a squarer jaw angle and chin, thinner lips, a broader neck with an
    Adam's apple and broader shoulders.

    Sized so that a person tells the sexes apart from the face alone (about 2 SD on the features that
    carry sex in real faces, Bruce et al. 1993, Perception 22:131); hair does not: it is a factor of its own.
    """
    m = mirror(p)
    torso = (kind == TORSO).astype(float)
    shoulders = np.stack([0.12 * p[:, 0] * torso, 0.02 * torso, np.zeros(len(p))], -1)
    # Women's brows sit higher over the eye and arch at the tail; men's are low and straight.
    # Men's come down along their whole length, most over the arch: a brow lowered only at the arch would
    # leave its head raised, the oblique brow of sadness (AU1) on a neutral face.
    along = np.clip((m[:, 0] - 0.02) / 0.08, 0, 1) * np.clip((0.62 - m[:, 0]) / 0.12, 0, 1) \
        * (0.65 + 0.35 * np.exp(-(((m[:, 0] - 0.34) / 0.13) ** 2)))
    brows = _vec(along * bump(p, (0.0, 0.31, 0.8), (np.inf, 0.08, 0.2)) * (p[:, 2] > 0.3), y=-0.09)
    jaw_angle = _lateral(p, bump(m, (0.5, -0.88, 0.1), (0.13, 0.13, 0.25)), 0.025)
    # A man's neck is broader and deeper (adults' necks measure about 38 cm round against 33 cm; here 36
    # and 31 cm at gender_strength 1, 11.4 and 9.8 cm broad, measured on the built mean face), with the
    # larynx's prominence in front under the chin (half of it is in the mean face, see :func:`larynx`).
    q = neck_coords(p)
    on_neck = (kind == SKIN) * np.clip((-p[:, 1] - 0.95) / 0.3, 0, 1) \
        * np.clip((1.4 - np.linalg.norm(q, axis=-1)) / 0.3, 0, 1)
    neck = _vec(on_neck, x=0.08 * q[:, 0], z=0.06 * q[:, 1])
    return (neck + larynx(p, kind)  # (first: another order of the sum changes the built model's last bits)
            + 2.5 * f["brow_ridge"] - 2.5 * f["cheek_fullness"] + 2.0 * f["chin_protrusion"] + 1.6 * f["chin_width"]
            - 0.8 * f["upper_lip"] - 0.8 * f["lower_lip"] - 1.6 * f["forehead_slope"] + 2.0 * f["nose_protrusion"]
            + 1.5 * f["nose_bridge"] + 1.2 * f["eye_depth"] - 1.0 * f["eye_size"] + brows + jaw_angle + shoulders)


def larynx(p: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """The larynx's prominence (Adam's apple) on the throat under the chin: a bump 6 mm high and 1 cm in
    radius, which the neck's sparse rows (2.4 to 4 cm apart) sample as 2.4 mm forward on the 100-ring mesh
    at the one row beside it. The sex row (:func:`sex_fields`) carries all of it and the mean face half, so
    that a man at gender_strength 1 has all of it, a woman none and the androgynous face half (2.8 had it
    in the male-minus-female row alone: half of it for a man, half of it inwards for a woman)."""
    _, nz, _, rz = NECK
    return _vec(bump(p, (0.0, -1.3, nz + rz), (0.06, 0.1, 0.12)) * (kind == SKIN), z=0.06)


def age_fields(f: dict[str, np.ndarray], p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ageing: a linear trend per 40 years (nose and ears lengthen, lips thin, cheeks flatten) and a
    saturating one from 25 to 70 (jowls sag below the jaw line, the nasolabial fold deepens,
    brows and upper lids droop)."""
    m = mirror(p)
    linear = 0.8 * f["nose_height"] + 0.5 * f["ear_size"] - 0.9 * f["upper_lip"] - 0.9 * f["lower_lip"] \
        - 0.6 * f["cheek_fullness"]
    sag = (_vec(bump(m, (0.36, -0.82, 0.35), (0.16, 0.12, 0.22)), y=-0.035, z=0.01)
           + _vec(bump(m, (0.2, -0.5, 0.75), (0.08, 0.14, 0.14)), z=0.015) + _vec(bump(m, (0.27, -0.52, 0.78), (0.06, 0.12, 0.1)), z=-0.01)
           + _vec(bump(m, (0.38, 0.27, 0.72), (0.14, 0.08, 0.14)), y=-0.02)
           + _vec(bump(m, EYE_CENTRE + [0.05, 0.06, 0.1], (0.12, 0.04, 0.1)), y=-0.008)
           + _vec(bump(m, EYE_CENTRE + [0.0, -0.085, 0.12], (0.1, 0.03, 0.08)), z=0.01))
    return linear, sag
