"""Colours of the face model: the template's albedo and the albedo fields of identity, sex, age and expression.

Albedo is display-referred RGB in [0, 1] (the shader squares it into linear reflectance).
Skin varies along the two axes real skin colour varies along, melanin (darker and
yellower) and haemoglobin (redder), never towards green or blue; the identity texture
fields are smooth and low in contrast, with fine detail in the high bands.
"""

from __future__ import annotations

import numpy as np

from .fields import bump, mouth_profile
from .mesh import (EYE_CENTRE, EYES, FISSURE, HAIR, IRIS_DEG, LOWER_TEETH, MOUTH_Y, PART, PUPIL_DEG, SKIN, TORSO,
                   UPPER_TEETH, Template, brow_density, fissure_heights, mirror, part_distances, scalp_density,
                   smooth)

SKIN_TONE = np.array([0.88, 0.70, 0.60])  # the template's (ethnicity A) skin
MELANIN = np.array([-0.42, -0.4, -0.36]) / 0.7  # per unit of "darker": R falls least, B most (relative)
HAEMOGLOBIN = np.array([0.25, -0.75, -0.45]) / 0.9
HAIR_COLOUR = np.array([0.27, 0.19, 0.13])
SCALP_HAIR = 0.85  # hair painted on the scalp: a little lighter than the shell's strands (0.78 on average)
LIP_COLOUR = np.array([0.8, 0.54, 0.51])
GREY_HAIR = 0.68  # albedo that greying hair tends to
OCCLUSION_FLOOR = 0.3  # share of the light a fully occluded point still gets (light bounced off nearby skin)
ETHNIC_TONES = {  # skin, hair, iris of each group
    "A": ([0.88, 0.70, 0.60], [0.27, 0.19, 0.13], [0.36, 0.33, 0.3]),
    "B": ([0.82, 0.64, 0.50], [0.09, 0.075, 0.07], [0.2, 0.13, 0.08]),
    "C": ([0.50, 0.35, 0.26], [0.07, 0.06, 0.055], [0.15, 0.09, 0.06]),
}
_LUMA = np.array([0.2126, 0.7152, 0.0722])


def texture_gain(group: str) -> float:
    """Scale of the identity texture variation on a face of ethnic ``group``: its skin's luminance over the
    template's (group A). Colour varies in proportion to the colour it varies (as under a melanin filter), so
    a darker face's blotches and lip colour stay in its own hue instead of tipping towards grey or green."""
    return float(np.asarray(ETHNIC_TONES[group][0]) @ _LUMA / (np.asarray(ETHNIC_TONES["A"][0]) @ _LUMA))


def _smooth_step(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return smooth(np.clip((x - lo) / (hi - lo), 0.0, 1.0))


def lid_margins(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closeness (0..1) of skin points to the upper and lower lid margins of the eye opening."""
    m = mirror(p)
    upper, lower = fissure_heights(m[:, 0])
    x0, x1 = FISSURE[:2]
    span = np.clip(1.0 - np.maximum(x0 - m[:, 0], m[:, 0] - x1) / 0.02, 0, 1) * (m[:, 2] > EYE_CENTRE[2] - 0.05)
    near_u = np.exp(-(((m[:, 1] - upper) - 0.004) / 0.01) ** 2) * span
    near_l = np.exp(-(((m[:, 1] - lower) + 0.003) / 0.008) ** 2) * span
    return near_u, near_l


STUBBLE_SEED = 1811  # the stubble's own generator (not the model's): one fixed pattern per template
GRAIN_ROWS = (0.05, 0.07)  # the stubble's grain is full where the mesh's rows lie up to 5 mm apart, gone beyond 7


def row_spacing(t: Template) -> np.ndarray:
    """(V,) distance from each vertex to its grid neighbour above or below, whichever is further (0 for none)."""
    p, nb, idx = t.vertices, t.neighbours, np.arange(len(t.vertices))
    up, down = (np.linalg.norm(p - p[np.where(nb[:, k] >= 0, nb[:, k], idx)], axis=1) for k in (2, 3))
    return np.maximum(up, down)


def stubble_grain(t: Template, spread: float = 0.6) -> np.ndarray:
    """Per-vertex grain (mean 1) of a man's stubble: each point's darkness drawn uniformly from 1 +- ``spread``,
    so the beard shadow reads as short dark hairs over skin rather than a grey stain. Vertices at one point (the
    mouth's rings beyond its corners) share a draw, or the colour would step along the line they lie on. The
    grain fades to a smooth 1 where the mesh's rows lie 5 to 7 mm apart and beyond (under the chin and down the
    neck, up to 28 mm), where it would draw each vertex as a streak."""
    p = t.vertices
    noise = np.random.default_rng(STUBBLE_SEED).random(len(p))
    _, first, point = np.unique(np.round(p, 6), axis=0, return_index=True, return_inverse=True)
    noise = noise[first[point.ravel()]]
    lo, hi = GRAIN_ROWS
    resolved = np.clip((hi - row_spacing(t)) / (hi - lo), 0.0, 1.0)
    return 1.0 + resolved * spread * (2.0 * noise - 1.0)


def _lines(coord: np.ndarray, period: float, width: float = 0.22) -> np.ndarray:
    """Thin periodic lines (0..1) across ``coord`` (wrinkles, strands)."""
    phase = (coord / period) % 1.0
    return np.exp(-(((phase - 0.5) / width) ** 2))


def masks(t: Template, anchors: np.ndarray) -> dict[str, np.ndarray]:
    """Per-vertex region weights (0..1) the colours are painted with."""
    p = t.vertices
    m = mirror(p)
    lab = t.labels
    skin = t.kind == SKIN
    parts = part_distances(p)
    scalp = scalp_density(p) * skin
    # The face's skin, less the hair painted on it: it fades out as the paint thins in (no edge where the
    # scalp's part label begins).
    face_skin = (skin & np.isin(lab, [PART["skin"], PART["nose"], PART["ears"], PART["left_brow"], PART["right_brow"],
                                      PART["hair"]])) * (1.0 - scalp)
    lips = np.clip(-parts["lips"] / 0.01 + 0.5, 0, 1) * skin * (p[:, 2] > 0.7)
    lash_u, lash_l = lid_margins(p)
    from .mesh import eye_aperture

    rim = (np.abs(eye_aperture(p)) < 0.006) * (m[:, 2] < EYE_CENTRE[2] + 0.12) * (m[:, 2] > EYE_CENTRE[2] - 0.02)
    # The beard area: below the cheek line (from the sideburn in front of the ear to beside the mouth corner),
    # the jaw to the neck under it, fuller on the chin and over the upper lip; not on the lips.
    cheek_line = (0.47 * (m[:, 0] - 0.64) - 0.38 * (m[:, 1] + 0.05)) / 0.6  # > 0 below the line
    # Thin where it begins on the cheeks, full along the jaw: no slab with an edge.
    density = 0.4 + 0.6 * _smooth_step(cheek_line, 0.02, 0.22)
    jaw = _smooth_step(cheek_line, -0.05, 0.09) * density * _smooth_step(p[:, 2], -0.05, 0.1) \
        * _smooth_step(p[:, 1], -1.3, -1.12)
    chin = bump(p, (0, -0.9, 0.6), (0.26, 0.2, 0.4))
    moustache = bump(p, (0, -0.52, 0.92), (0.2, 0.06, 0.12))
    corners = bump(m, (0.26, -0.7, 0.8), (0.07, 0.12, 0.2))  # joins the moustache to the chin
    beard = np.clip(0.8 * jaw + 0.9 * chin + 0.8 * moustache + 0.6 * corners, 0, 1)
    beard *= face_skin * (1 - lips) * (lab != PART["ears"])
    return {
        "face_skin": face_skin,
        "skin": skin.astype(float),
        "lips": lips,
        "lash_upper": lash_u * skin,
        "rim": rim * skin,
        "lash_lower": lash_l * skin,
        "upper_lid": bump(m, EYE_CENTRE + [0.02, 0.07, 0.09], (0.14, 0.04, 0.1)) * skin,
        "brow": brow_density(p) * skin,
        "brow_wide": brow_density(p, 1.5) * skin,
        "brow_thin": brow_density(p, 0.55) * skin,
        "cheeks": bump(m, (0.4, -0.28, 0.6), (0.14, 0.13, 0.18)) * skin,
        "under_eye": bump(m, EYE_CENTRE + [0.02, -0.09, 0.1], (0.12, 0.04, 0.1)) * skin,
        "nose_tip": bump(p, (0, -0.3, 1.1), (0.08, 0.08, 0.1)) * skin,
        "beard": beard,
        "stubble": beard * stubble_grain(t),
        "scalp": scalp,
        "ears": (skin & (lab == PART["ears"])).astype(float),
        "hair": (t.kind == HAIR).astype(float),
        "iris": ((t.eye_angle <= IRIS_DEG) & np.isin(t.kind, EYES)).astype(float),
        "forehead": bump(p, (0, 0.55, 0.68), (0.45, 0.18, 0.3)) * face_skin,
    }


def template_albedo(t: Template, mk: dict[str, np.ndarray]) -> np.ndarray:
    """Albedo (V, 3) of the template (ethnicity A, androgynous, 30 years)."""
    p = t.vertices
    nv = len(p)
    a = np.tile(SKIN_TONE, (nv, 1))
    a += mk["cheeks"][:, None] * 0.6 * HAEMOGLOBIN * 0.05 + mk["nose_tip"][:, None] * HAEMOGLOBIN * 0.03
    a += mk["ears"][:, None] * HAEMOGLOBIN * 0.04
    a += mk["under_eye"][:, None] * np.array([-0.05, -0.05, -0.02])
    a += mk["lips"][:, None] * (LIP_COLOUR - SKIN_TONE)
    # Brows: soft hair bands, densest in the middle. (Painted strands, 1.2 mm apart, were finer than the
    # vertices and aliased into dashes.)
    m = mirror(p)
    a += np.clip(mk["brow"] * 1.2, 0, 1)[:, None] * (0.8 * HAIR_COLOUR - SKIN_TONE) * 0.85
    a *= (1.0 - 0.85 * mk["lash_upper"] - 0.35 * mk["lash_lower"])[:, None]
    a[mk["rim"] > 0] = [0.3, 0.16, 0.14]  # the lids' inner margins, around the eyeball
    a += mk["upper_lid"][:, None] * np.array([-0.03, -0.04, -0.03])
    nostril = (np.linalg.norm((m - [0.06, -0.405, 1.0]) / [0.032, 0.026, 0.06], axis=1) < 1.0) & (t.kind == SKIN)
    a[nostril] *= 0.35
    a += mk["scalp"][:, None] * (SCALP_HAIR * HAIR_COLOUR - a)  # hair painted on the scalp, thinning out below
    # Lips' edges and the oral cavity.
    lower, floor, roof, upper = t.mouth_ring_vertices()
    inside = mouth_profile(p[upper, 0]) * (p[upper, 2] > 0.5) > 0
    a[upper[inside]] = LIP_COLOUR * 0.45
    a[lower[inside]] = LIP_COLOUR * 0.5
    a[roof[inside]] = [0.16, 0.05, 0.05]
    a[floor[inside]] = [0.36, 0.13, 0.13]
    # Eyes: off-white sclera, a radially streaked iris with a dark limbal ring, the pupil.
    eye = np.isin(t.kind, EYES)
    ang = t.eye_angle
    beta = np.arctan2(t.directions[:, 1], t.directions[:, 0])
    a[eye] = [0.84, 0.81, 0.77]
    iris = eye & (ang <= IRIS_DEG)
    streak = 0.85 + 0.15 * np.cos(beta * 9.0) * np.cos(beta * 4.0)
    iris_c = np.asarray(ETHNIC_TONES["A"][2])
    a[iris] = iris_c * streak[iris, None]
    a[eye & (ang > IRIS_DEG - 5) & (ang <= IRIS_DEG)] *= 0.55
    a[eye & (ang <= PUPIL_DEG)] = [0.03, 0.03, 0.035]
    a[eye & (ang > 70)] *= 0.8  # the corners of the eye, in the lids' shadow
    # Teeth (enamel, darker in the gaps) and gums.
    teeth = np.isin(t.kind, (UPPER_TEETH, LOWER_TEETH))
    shade = t.tooth_shade
    a[teeth] = np.where(shade[teeth, None] > 0, np.array([0.96, 0.94, 0.86]) * shade[teeth, None],
                        np.array([0.72, 0.4, 0.4]))
    # Hair: strands fanning out from the crown.
    hair = t.kind == HAIR
    phi = np.arctan2(t.directions[:, 0], -t.directions[:, 2])
    strand = 0.78 + 0.22 * np.cos(phi * 60.0 + 3.0 * np.sin(phi * 7.0)) * np.cos(phi * 23.0)
    a[hair] = HAIR_COLOUR * strand[hair, None]
    # Clothing: a dark shirt with a slightly lighter collar band.
    torso = t.kind == TORSO
    collar = _smooth_step(p[:, 1], -1.62, -1.5)
    a[torso] = np.array([0.2, 0.24, 0.32]) + collar[torso, None] * np.array([0.06, 0.06, 0.07])
    return np.clip(a, 0.02, 1.0)


def specular_strength(t: Template, mk: dict[str, np.ndarray]) -> np.ndarray:
    """Per-vertex strength of the specular highlight (skin sheen, wet lips and eyes, hair, matte cloth)."""
    s = np.full(len(t.vertices), 0.16)
    s += 0.03 * mk["lips"] + 0.05 * mk["nose_tip"] + 0.04 * mk["forehead"]
    s[np.isin(t.kind, EYES)] = 0.06
    s[np.isin(t.kind, (UPPER_TEETH, LOWER_TEETH))] = 0.25
    s[t.kind == HAIR] = 0.22
    s += mk["scalp"] * (0.1 - s)
    s[t.kind == TORSO] = 0.04
    return s


def hair_weight(t: Template, mk: dict[str, np.ndarray]) -> np.ndarray:
    """How much each vertex greys with age (hair and fully painted scalp fully, brows in part).

    The renderer greys a vertex's whole colour, skin and hair alike, so where the scalp's paint thins out
    (density s) the weight is sqrt(s), not s: greying s of a mixed colour would leave the thinning band
    darker than both the grey hair and the skin (by 0.08 in albedo at full grey on the lightest skin; by
    0.04 with sqrt(s))."""
    return np.clip(mk["hair"] + np.sqrt(mk["scalp"]) + 0.7 * mk["brow"], 0.0, 1.0)


def identity_texture_fields(t: Template, mk: dict[str, np.ndarray], bands: int, per_band: int,
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Identity texture fields (N, V, 3) at one standard deviation, their band, and names.

    Band 0 holds the named fields (skin tone, redness, lip colour, brow density, hair and
    iris colour) and the smoothest random fields; band j random fields of wavelengths
    between 2 pi / (5 2^j) and 2 pi / (2.5 2^j) decimetres (13-25 cm in band 0, 8-16 mm in
    band 4), each a skin-coloured mixture of melanin and haemoglobin, weaker in higher
    bands (smooth, low-contrast skin with fine detail).
    """
    p = t.vertices
    skin = mk["skin"] * (t.kind == SKIN)
    face = mk["face_skin"]
    named = {
        "skin_tone": skin[:, None] * MELANIN * 0.075,
        "redness": (0.4 * skin + mk["cheeks"] + 0.7 * mk["nose_tip"])[:, None] * HAEMOGLOBIN * 0.022,
        # redder (+) or browner (-) lips: red moves most, so neither sign turns a dark lip green
        "lip_colour": mk["lips"][:, None] * np.array([0.03, -0.008, -0.004]),
        "brow_density": (mk["brow_wide"] * face)[:, None] * (HAIR_COLOUR - SKIN_TONE) * 0.3,
        "hair_lightness": (mk["hair"] + mk["scalp"] + 0.5 * mk["brow"])[:, None] * np.array([0.15, 0.12, 0.08]),
        "hair_redness": (mk["hair"] + mk["scalp"])[:, None] * np.array([0.045, -0.005, -0.03]),
        "iris_lightness": mk["iris"][:, None] * np.array([0.07, 0.09, 0.11]),
        "iris_hue": mk["iris"][:, None] * np.array([0.05, 0.02, -0.05]),
    }
    band_rms = np.array([0.02, 0.012, 0.008, 0.007, 0.006, 0.005, 0.005, 0.005])  # per channel, all fields of a band
    fields, band_of, names = [], [], []
    for j in range(bands):
        lo = 2.5 * 2.0**j
        count = per_band
        if j == 0:
            for name, f in list(named.items())[:per_band]:
                fields.append(f)
                band_of.append(0)
                names.append(name)
            count = per_band - min(per_band, len(named))
        amp = band_rms[min(j, len(band_rms) - 1)] * np.sqrt(3.0 / max(count, 1))
        for k in range(count):
            s = np.zeros(len(p))
            for _ in range(4):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                s += np.cos(p @ (direction * rng.uniform(lo, 2 * lo)) + rng.uniform(0, 2 * np.pi))
            colour = rng.normal() * MELANIN + 0.35 * rng.normal() * HAEMOGLOBIN
            colour /= max(np.linalg.norm(colour), 1e-9)
            fields.append((skin * s * amp / np.sqrt(2.0))[:, None] * colour[None, :])
            band_of.append(j)
            names.append(f"band{j}_{k}")
    return np.stack(fields), np.asarray(band_of), names


def sex_albedo(t: Template, mk: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Albedo of a typical man and woman relative to the androgynous template (gender_strength 1).

    Men: stubble (a grain of short dark hairs on the jaw, chin and upper lip), denser and darker
    brows, eyes in deeper shadow under the brow, a slightly darker and ruddier skin; women:
    lighter, smoother skin, redder lips, darker lashes and lid line, thinner brows and a touch
    of blush. Both darken the eyes' surroundings and the mouth's, as the sexes' higher facial
    contrast does (Russell 2009, Perception 38:1211).
    """
    nv = len(t.vertices)
    face = mk["face_skin"]
    male = np.zeros((nv, 3))
    # Stubble: short dark hairs over the skin, in a grain (1 +- 0.6 per point) and darker than the grey shadow
    # of 2.10 ([-0.42, -0.28, -0.17]), which raters did not take for hair on men with long hair.
    male += mk["stubble"][:, None] * np.array([-0.52, -0.42, -0.32])
    male += (mk["brow_wide"] * face)[:, None] * (0.7 * HAIR_COLOUR - SKIN_TONE) * 0.3
    male += face[:, None] * np.array([-0.015, -0.035, -0.035])
    male += (mk["upper_lid"] + 0.5 * mk["under_eye"])[:, None] * np.array([-0.07, -0.075, -0.06])  # deep-set eyes
    female = np.zeros((nv, 3))
    female += (face * (1.0 - mk["beard"]))[:, None] * np.array([0.035, 0.035, 0.03])
    female += mk["lips"][:, None] * np.array([0.07, -0.2, -0.12])
    # lined, darkened lashes and a shaded lid (the eyes' higher contrast, Russell 2009)
    female += (np.clip(mk["lash_upper"] * 1.6, 0, 1) + 0.5 * mk["lash_lower"])[:, None] * np.array([-0.4, -0.36, -0.33])
    female += mk["upper_lid"][:, None] * np.array([-0.07, -0.09, -0.06])
    female += mk["cheeks"][:, None] * np.array([0.03, -0.06, -0.03])
    # thinner, plucked-looking brows: the brow's outer band gone, only its core left
    female -= (np.clip(mk["brow"] - mk["brow_thin"], 0, 1) * face)[:, None] * (HAIR_COLOUR - SKIN_TONE) * 0.55
    return male, female


def age_albedo(t: Template, mk: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ageing albedo: a linear trend per 40 years (paler, yellower skin, paler lips) and saturating
    wrinkles and age spots (forehead lines, crow's feet, nasolabial and marionette folds, lines
    under the eyes)."""
    p = t.vertices
    m = mirror(p)
    face = mk["face_skin"]
    # lips pale towards the skin's colour (less red), not towards grey
    linear = face[:, None] * np.array([0.0, -0.012, -0.03]) + mk["lips"][:, None] * np.array([-0.01, 0.03, 0.025])
    forehead = bump(p, (0, 0.5, 0.7), (0.36, 0.13, 0.3)) * _lines(p[:, 1] + 0.01 * np.cos(p[:, 0] * 9), 0.045)
    crow = bump(m, (0.5, 0.08, 0.52), (0.06, 0.08, 0.15)) * _lines(np.arctan2(m[:, 1] - 0.09, m[:, 0] - 0.44), 0.3)
    fold = nasolabial(p)
    marionette = np.exp(-(((m[:, 0] - 0.24 + 0.12 * (p[:, 1] - MOUTH_Y)) / 0.014) ** 2)) * (p[:, 1] < MOUTH_Y) \
        * (p[:, 1] > MOUTH_Y - 0.22)
    under_eye = bump(m, EYE_CENTRE + [0.03, -0.095, 0.1], (0.1, 0.012, 0.1))
    wrinkle = (0.9 * forehead + 0.8 * crow + 1.0 * fold + 0.6 * marionette + 0.6 * under_eye) * face
    spots = np.zeros(len(p))
    for _ in range(40):
        c = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.7), 0.0])
        c[2] = 0.95 - 0.5 * (c[0] ** 2 + (c[1] + 0.1) ** 2)
        spots += bump(p, c, rng.uniform(0.008, 0.02)) * rng.uniform(0.5, 1.0)
    spots = np.clip(spots, 0, 1) * face
    sag = -wrinkle[:, None] * np.array([0.3, 0.3, 0.26]) + spots[:, None] * np.array([-0.12, -0.14, -0.14])
    return linear, sag


def nasolabial(p: np.ndarray, width: float = 0.03) -> np.ndarray:
    """The nasolabial fold: a soft crease from beside the nose's wing to about 1 cm beyond the
    mouth corner, fading at both ends."""
    m = mirror(p)
    s = np.clip((-0.36 - p[:, 1]) / 0.34, 0, 1)
    centre = 0.18 + 0.16 * s ** 1.3
    fade = np.sin(np.pi * s) ** 0.7
    return np.exp(-(((m[:, 0] - centre) / width) ** 2)) * fade * (p[:, 2] > 0.5)


def action_unit_albedo(t: Template, mk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Shading of the skin creases each action unit makes (darkening in display albedo)."""
    p = t.vertices
    m = mirror(p)
    face = mk["face_skin"]
    dark = np.array([-0.16, -0.17, -0.15])

    def crease(w: np.ndarray) -> np.ndarray:
        return (np.clip(w, 0, 1) * face)[:, None] * dark

    forehead_lines = _lines(p[:, 1] + 0.008 * np.cos(p[:, 0] * 11), 0.042)
    return {
        "AU1": crease(bump(m, (0.08, 0.52, 0.75), (0.18, 0.13, 0.3)) * forehead_lines),
        "AU2": crease(bump(m, (0.33, 0.5, 0.68), (0.16, 0.12, 0.3)) * forehead_lines),
        "AU4": crease(bump(p, (0, 0.26, 0.86), (0.08, 0.07, 0.12)) * _lines(np.abs(p[:, 0]) + 0.015, 0.035, 0.18)
                      * 1.4),
        "AU6": crease(bump(m, (0.5, 0.06, 0.52), (0.06, 0.08, 0.15))
                      * _lines(np.arctan2(m[:, 1] - 0.09, m[:, 0] - 0.44), 0.28) + 0.6 * nasolabial(p)),
        "AU7": crease(0.5 * bump(m, EYE_CENTRE + [0.02, -0.085, 0.1], (0.1, 0.012, 0.1))),
        # three or four creases across the root of the nose, 4.5 mm apart, and oblique ones down its sides (4.3
        # mm apart), and the nasolabial folds, a fifth darker than the other units' creases: at least two mesh
        # rows per period on the 100-ring mesh (2.8's 2.5 mm lines fell between the vertices)
        "AU9": 1.2 * crease(
            1.6 * bump(p, (0, 0.06, 0.9), (0.1, 0.07, 0.12)) * _lines(p[:, 1] - 0.1 * np.abs(p[:, 0]), 0.045, 0.2)
            + 1.2 * bump(m, (0.09, -0.06, 0.85), (0.05, 0.08, 0.12)) * _lines(p[:, 1] + 0.6 * m[:, 0], 0.05, 0.2)
            + nasolabial(p)),
        "AU10": crease(nasolabial(p) * 0.8),
        "AU12": crease(nasolabial(p) * 0.8),
        "AU15": crease(0.5 * np.exp(-(((m[:, 0] - 0.27 + 0.1 * (p[:, 1] - MOUTH_Y)) / 0.015) ** 2))
                       * (p[:, 1] < MOUTH_Y) * (p[:, 1] > MOUTH_Y - 0.18)),
        "AU17": crease(0.4 * bump(p, (0, -0.9, 0.58), (0.15, 0.1, 0.2)) * (0.5 + 0.5 * np.cos(p[:, 0] * 90) * np.cos(p[:, 1] * 80))),
        "AU20": crease(0.3 * nasolabial(p)),
        "AU23": (np.clip(mk["lips"] * 1.6, 0, 1) * (1.0 - 0.6 * mk["lips"]))[:, None] * (SKIN_TONE - LIP_COLOUR) * 0.9,
    }


def ambient_occlusion(v: np.ndarray, f: np.ndarray, n: np.ndarray, labels: np.ndarray, directions: int = 128,
                      cell: float = 0.02, bias: float = 0.01) -> np.ndarray:
    """Ambient occlusion (V,) of a mesh's vertices: the cosine-weighted share of ``directions`` directions
    (a Fibonacci sphere) in which nothing of the mesh lies above the vertex (1 = open sky, 0 = enclosed).

    Per direction d, the mesh is seen from d as a depth map (cells of ``cell``; seven points splatted per
    triangle, its vertices too, the highest kept, then a 3x3 maximum to close the gaps); a vertex is shadowed
    where the map lies above it by more than ``bias`` plus a slope-scaled bias (its own surface, seen at a
    grazing angle, must not shadow it), as shadow maps do. The result is smoothed twice over the triangles
    that have an area and whose vertices share a part label (the oral cavity's rings, collapsed onto the skin
    where the mouth is closed, must not darken the skin they adjoin).
    """
    k = np.arange(directions) + 0.5
    z = 1.0 - 2.0 * k / directions
    phi = np.pi * (1.0 + 5.0 ** 0.5) * k
    ring = np.sqrt(1.0 - z * z)
    dirs = np.stack([ring * np.cos(phi), ring * np.sin(phi), z], 1)
    bary = np.array([[1, 1, 1], [3, 3, 0], [0, 3, 3], [3, 0, 3], [4, 1, 1], [1, 4, 1], [1, 1, 4]]) / 6.0
    bary[0] = 1.0 / 3.0
    pts = np.concatenate([v, np.einsum("sk,fkd->fsd", bary, v[f]).reshape(-1, 3)])
    num, den = np.zeros(len(v)), np.zeros(len(v))
    for d in dirs:
        a = np.cross(d, [0.0, 1.0, 0.0] if abs(d[1]) < 0.9 else [1.0, 0.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(d, a)
        uv = np.stack([pts @ a, pts @ b], 1)
        lo = uv.min(0)
        ij = np.floor((uv - lo) / cell).astype(int) + 1
        depth = np.full(ij.max(0) + 2, -np.inf)
        np.maximum.at(depth, (ij[:, 0], ij[:, 1]), pts @ d)
        top = depth.copy()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                top[1:-1, 1:-1] = np.maximum(top[1:-1, 1:-1], depth[1 + di:depth.shape[0] - 1 + di,
                                                                     1 + dj:depth.shape[1] - 1 + dj])
        vij = np.floor((np.stack([v @ a, v @ b], 1) - lo) / cell).astype(int) + 1
        w = np.clip(n @ d, 0.0, None)
        slope = np.sqrt(1.0 - np.minimum(w, 1.0) ** 2) / np.maximum(w, 0.05)
        num += w * (top[vij[:, 0], vij[:, 1]] <= v @ d + bias + 2.0 * cell * slope)
        den += w
    ao = num / np.maximum(den, 1e-12)
    # Two passes of averaging over each vertex's triangles: the directions' discrete steps leave vertex noise.
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    same = f[(labels[f[:, 0]] == labels[f[:, 1]]) & (labels[f[:, 1]] == labels[f[:, 2]]) & (area > 1e-8)]
    for _ in range(2):
        acc, cnt = np.zeros(len(v)), np.zeros(len(v))
        tri_mean = ao[same].mean(1)
        for c in range(3):
            np.add.at(acc, same[:, c], tri_mean)
            np.add.at(cnt, same[:, c], 1.0)
        ao = np.where(cnt > 0, acc / np.maximum(cnt, 1.0), ao)
    return ao


def occlusion_scale(ao: np.ndarray) -> np.ndarray:
    """Albedo factor (V,) that bakes ambient occlusion ``ao`` into the colours: the shader squares albedo into
    linear light, so the factor is the square root of the light a point receives (at least
    :data:`OCCLUSION_FLOOR`)."""
    return np.sqrt(OCCLUSION_FLOOR + (1.0 - OCCLUSION_FLOOR) * np.clip(ao, 0.0, 1.0))
