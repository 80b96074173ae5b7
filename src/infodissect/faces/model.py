"""The face model: template, identity bases and intrinsic-factor fields.

Shape and texture of a face are linear in a coefficient vector:

* shape: ``template + sum_k sigma_k c_k Q_k + gender + ethnicity + age + expression``
  with ``Q`` an orthonormal basis (in R^{3V}) of smooth displacement fields, both
  anatomically named (nose width, lip fullness, eye spacing, jaw width, ...) and
  global, ordered by a decaying ``sigma``;
* texture: ``albedo(ethnicity) + sum_{band,k} tau_{band,k} t_{band,k} T_{band,k} + ...``
  with ``T`` an orthonormal basis of RGB albedo fields in spatial-frequency bands.

Identity is the pair of coefficient vectors (c, t), drawn from N(0, I).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable
from functools import lru_cache

import numpy as np
import scipy.linalg
import torch

from .factors import ETHNICITIES, EXPRESSIONS
from .mesh import (EYE_CENTRE, MOUTH_HALF_WIDTH, MOUTH_Y, PART, PART_NAMES, Template, build_template, face_labels,
                   grid_subset, part_distances)

GENERATOR_VERSION = "1.3"  # 1.3: random shape fields act along the rays; reordered shading arithmetic

# Coefficients of each expression on the action-unit fields of _action_units.
EXPRESSION_AUS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happiness": {"cheek_raise": 0.9, "lip_corner_pull": 1.0, "jaw_drop": 0.25, "lid_tighten": 0.3},
    "surprise": {"inner_brow_raise": 1.0, "brow_raise": 1.0, "upper_lid_raise": 1.0, "jaw_drop": 0.9},
    "fear": {"inner_brow_raise": 1.0, "brow_raise": 0.4, "brow_lower": 0.5, "upper_lid_raise": 1.0,
             "lip_stretch": 1.0, "jaw_drop": 0.4},
    "disgust": {"nose_wrinkle": 1.0, "upper_lip_raise": 1.0, "brow_lower": 0.5, "lip_corner_depress": 0.4,
                "lid_tighten": 0.4},
    "anger": {"brow_lower": 1.0, "lid_tighten": 0.8, "upper_lid_raise": 0.3, "lip_press": 1.0},
    "sadness": {"inner_brow_raise": 1.0, "brow_lower": 0.3, "lip_corner_depress": 1.0, "lid_tighten": 0.3},
}


def _bump(p: np.ndarray, c, r) -> np.ndarray:
    return np.exp(-np.sum(((p - np.asarray(c)) / np.asarray(r)) ** 2, -1))


def _sgnx(p: np.ndarray, w: float = 0.1) -> np.ndarray:
    """A smooth sign of x: +1 on the subject's left, -1 on the right."""
    return np.tanh(p[:, 0] / w)


def _field(weight: np.ndarray, vec) -> np.ndarray:
    """A displacement field: per-vertex ``weight`` times a vector (3,) or (V, 3)."""
    vec = np.asarray(vec, dtype=float)
    return weight[:, None] * (vec if vec.ndim == 2 else vec[None, :])


def _mirror(p: np.ndarray) -> np.ndarray:
    q = p.copy()
    q[:, 0] = np.abs(q[:, 0])
    return q


def _lateral(p: np.ndarray, amount: float) -> np.ndarray:
    """Per-vertex vector pointing away from the midline (x only)."""
    return np.stack([_sgnx(p) * amount, np.zeros(len(p)), np.zeros(len(p))], -1)


def anatomical_fields(p: np.ndarray) -> dict[str, np.ndarray]:
    """Named identity deformations at one standard deviation, evaluated at anchors ``p``."""
    m = _mirror(p)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    eye_c = EYE_CENTRE
    ear_c = np.array([0.72, 0.02, -0.12])
    face_w = 1.0 / (1.0 + np.exp(-(z - 0.1) / 0.15))
    zero = np.zeros_like(x)
    f: dict[str, np.ndarray] = {
        "head_width": np.stack([0.05 * x, zero, zero], -1),
        "head_height": np.stack([zero, 0.045 * (y + 0.2), zero], -1),
        "head_depth": np.stack([zero, zero, 0.04 * (z + 0.15)], -1),
        "face_length": _field(face_w / (1 + np.exp((y + 0.35) / 0.12)), [0, -0.045, 0]),
        "jaw_width": _field(_bump(m, (0.45, -0.72, 0.15), (0.22, 0.22, 0.35)), [0, 0, 0]) + _lateral(p, 0.04) * _bump(m, (0.45, -0.72, 0.15), (0.22, 0.22, 0.35))[:, None],
        "chin_protrusion": _field(_bump(p, (0, -0.95, 0.5), (0.2, 0.16, 0.22)), [0, 0, 0.04]),
        "chin_height": _field(_bump(p, (0, -0.98, 0.45), (0.22, 0.14, 0.25)), [0, -0.035, 0]),
        "cheekbones": _bump(m, (0.42, -0.12, 0.6), (0.16, 0.12, 0.16))[:, None] * np.stack([_sgnx(p) * 0.025, zero, np.full_like(x, 0.015)], -1),
        "brow_ridge": _field(_bump(p, (0, 0.28, 0.78), (0.42, 0.08, 0.12)), [0, 0, 0.03]),
        "eye_spacing": _lateral(p, 0.016) * _bump(m, eye_c, (0.22, 0.2, 0.4))[:, None],
        "eye_height": _field(_bump(m, eye_c, (0.24, 0.2, 0.4)), [0, 0.016, 0]),
        "eye_depth": _field(_bump(m, eye_c, (0.16, 0.13, 0.3)), [0, 0, -0.022]),
        "nose_width": _lateral(p, 0.022) * _bump(p, (0, -0.32, 0.95), (0.16, 0.1, 0.16))[:, None],
        "nose_length": _field(_bump(p, (0, -0.3, 1.05), (0.18, 0.16, 0.2)), [0, -0.02, 0.01]),
        "nose_protrusion": _field(_bump(p, (0, -0.18, 1.0), (0.16, 0.2, 0.2)), [0, 0, 0.035]),
        "nose_bridge": _field(_bump(p, (0, 0.05, 0.88), (0.12, 0.12, 0.1)), [0, 0, 0.025]),
        "lip_fullness": _bump(p, (0, MOUTH_Y, 0.86), (0.2, 0.09, 0.12))[:, None]
        * np.stack([zero, 0.008 * np.tanh((y - MOUTH_Y) / 0.05), np.full_like(x, 0.016)], -1),
        "mouth_width": _lateral(p, 0.016) * _bump(m, (0.17, MOUTH_Y, 0.85), (0.12, 0.1, 0.14))[:, None],
        "mouth_height": _field(_bump(p, (0, MOUTH_Y, 0.85), (0.26, 0.12, 0.2)), [0, 0.022, 0]),
        "forehead_slope": _field(_bump(p, (0, 0.55, 0.6), (0.6, 0.3, 0.35)), [0, 0, 0.04]),
        "ear_size": 0.18 * (m - ear_c) * _bump(m, ear_c, (0.15, 0.32, 0.22))[:, None] * np.stack([np.sign(x + 1e-12), np.ones_like(x), np.ones_like(x)], -1),
        "ear_protrusion": _lateral(p, 0.035) * _bump(m, ear_c, (0.14, 0.3, 0.22))[:, None],
        "cheek_fullness": _bump(m, (0.45, -0.5, 0.45), (0.2, 0.2, 0.2))[:, None] * np.stack([_sgnx(p) * 0.025, zero, np.full_like(x, 0.01)], -1),
    }
    return f


def action_unit_fields(p: np.ndarray, mouth_line: np.ndarray) -> dict[str, np.ndarray]:
    """Expression action units at full intensity (smooth displacement fields)."""
    m = _mirror(p)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    ec = EYE_CENTRE
    zero = np.zeros_like(x)
    upper_lid = _bump(m, ec + [0, 0.055, 0.13], (0.12, 0.045, 0.09))
    lower_lid = _bump(m, ec + [0, -0.05, 0.13], (0.11, 0.03, 0.09))
    corner = (MOUTH_HALF_WIDTH, MOUTH_Y, 0.8)
    below = 1.0 / (1.0 + np.exp((y - MOUTH_Y) / 0.006))
    jaw = below * np.exp(-((x / 0.42) ** 4)) / (1 + np.exp(-(z - 0.05) / 0.1)) / (1 + np.exp(-(y + 1.25) / 0.08))
    jaw_vec = np.stack([zero, np.full_like(x, -0.12), np.full_like(x, -0.01)], -1) * jaw[:, None]
    jaw_vec[mouth_line] -= 0.08 * p[mouth_line] / np.linalg.norm(p[mouth_line], axis=1, keepdims=True)  # recedes
    fields = {
        "brow_raise": _field(_bump(m, (0.3, 0.3, 0.78), (0.2, 0.11, 0.18)), [0, 0.035, 0]),
        "inner_brow_raise": _field(_bump(m, (0.12, 0.28, 0.82), (0.09, 0.08, 0.12)), [0, 0.03, 0]),
        "brow_lower": _bump(m, (0.2, 0.28, 0.8), (0.16, 0.08, 0.14))[:, None] * np.stack([-_sgnx(p) * 0.015, np.full_like(x, -0.028), zero], -1),
        "upper_lid_raise": _field(upper_lid, [0, 0.02, 0]),
        "lid_tighten": _field(upper_lid, [0, -0.02, 0]) + _field(lower_lid, [0, 0.012, 0]),
        "cheek_raise": _field(_bump(m, (0.38, -0.22, 0.62), (0.15, 0.13, 0.16)), [0, 0.025, 0.01]),
        "nose_wrinkle": _field(_bump(p, (0, -0.15, 1.0), (0.12, 0.14, 0.14)), [0, 0.015, 0]),
        "upper_lip_raise": _field(_bump(p, (0, MOUTH_Y + 0.05, 0.88), (0.14, 0.04, 0.12)) * (1 - below), [0, 0.02, 0]),
        "lip_corner_pull": _bump(m, corner, (0.08, 0.07, 0.12))[:, None] * np.stack([_sgnx(p) * 0.02, np.full_like(x, 0.035), np.full_like(x, -0.012)], -1),
        "lip_corner_depress": _field(_bump(m, (MOUTH_HALF_WIDTH, MOUTH_Y - 0.01, 0.8), (0.08, 0.06, 0.12)), [0, -0.03, 0]),
        "lip_stretch": _bump(m, corner, (0.09, 0.08, 0.12))[:, None] * np.stack([_sgnx(p) * 0.03, np.full_like(x, -0.006), np.full_like(x, -0.01)], -1),
        "lip_press": _bump(p, (0, MOUTH_Y, 0.86), (0.18, 0.07, 0.12))[:, None] * np.stack([zero, -0.01 * np.tanh((y - MOUTH_Y) / 0.03), np.full_like(x, -0.01)], -1),
    }
    # Expressions are meant to read at 64 px: the smooth fields act at 1.6x their anatomical size.
    fields = {k: 1.6 * v for k, v in fields.items()}
    fields["jaw_drop"] = jaw_vec
    return fields


def _random_fields(p: np.ndarray, n: int, rng: np.random.Generator, surface: np.ndarray) -> list[np.ndarray]:
    """Random smooth displacement fields: symmetric sums of Gaussian bumps on the face."""
    front = surface[(surface[:, 2] > 0.2) & (surface[:, 1] > -1.1)]
    out = []
    for _ in range(n):
        acc = np.zeros_like(p)
        for _ in range(3):
            c = front[rng.integers(len(front))]
            radius = rng.uniform(0.18, 0.45)
            normal = c / np.linalg.norm(c)
            vec = 0.7 * normal * rng.normal() + 0.3 * rng.normal(size=3)
            acc += _field(_bump(p, c, radius), vec)
            if rng.random() < 0.85:  # mostly bilateral, like faces
                cm = c * [-1, 1, 1]
                acc += _field(_bump(p, cm, radius), vec * [-1, 1, 1])
        out.append(acc)
    return out


def _radial(field: np.ndarray, p: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """The part of a displacement field along each skin vertex's ray from the head centre.

    The skin is a height field over those rays, and a face keeps its orientation about
    the centre (the star-shaped test of :func:`mesh.orientation_ok`) under any motion
    along them; sideways motion is what tips faces over on walls nearly parallel to the
    rays (mouth line, eyelid rims, nose sides). Eyeball vertices keep the whole field.
    """
    ray = p / np.linalg.norm(p, axis=1, keepdims=True)
    along = np.sum(field * ray, axis=1, keepdims=True) * ray
    return np.where(skin[:, None], along, field)


def _orthonormal(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormalise fields (K, D) in order; returns (Q (K, D), residual norms (K,))."""
    q, r = np.linalg.qr(fields.T)
    sign = np.sign(np.diag(r))
    sign[sign == 0] = 1
    return (q * sign).T, np.abs(np.diag(r))


def _texture_fields(p: np.ndarray, bands: int, per_band: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Band-limited RGB albedo fields (random Fourier features) and their band index."""
    fields, band_of = [], []
    for j in range(bands):
        lo = 2.5 * 2.0**j
        for _ in range(per_band):
            s = np.zeros(len(p))
            for _ in range(4):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                omega = direction * rng.uniform(lo, 2 * lo)
                s += np.cos(p @ omega + rng.uniform(0, 2 * np.pi))
            # Mostly lightness, some redness, a little yellowness: skin-like variation.
            colour = (rng.normal() * np.array([1.0, 1.0, 1.0]) + 0.5 * rng.normal() * np.array([1.0, -0.45, -0.55])
                      + 0.25 * rng.normal() * np.array([0.5, 0.4, -0.9]))
            fields.append(s[:, None] * colour[None, :])
            band_of.append(j)
    return np.stack(fields), np.asarray(band_of)


@dataclass
class FaceModel:
    """Linear face model on one device. Build it with :func:`build_face_model`."""

    template: Template
    shape_names: tuple[str, ...]
    shape_sigma: torch.Tensor  # (K,)
    shape_basis: torch.Tensor  # (K, V*3) orthonormal rows
    texture_band: torch.Tensor  # (T,) band index of each texture component
    texture_sigma: torch.Tensor  # (T,)
    texture_basis: torch.Tensor  # (T, V*3) orthonormal rows
    geometry_fixed: torch.Tensor  # (G, V*3): gender, ethnicities, age terms, expressions
    albedo_fixed: torch.Tensor  # (G, V*3)
    vertices: torch.Tensor  # (V, 3) template
    base_albedo: torch.Tensor  # (V, 3)
    hair: torch.Tensor  # (V,) hair weight for greying
    face_labels: torch.Tensor  # (F,) uint8 part label of each face
    faces: torch.Tensor  # (F, 3) int64
    specular: torch.Tensor  # (V,) specular strength
    normals_template: torch.Tensor  # (V, 3) outward normals of the template
    eye_mask: torch.Tensor  # (V,) bool
    device: torch.device
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def geometry_rows(self) -> torch.Tensor:
        """(K + G, V*3): sigma-scaled shape basis stacked on the fixed geometry rows (cached)."""
        return self._cached("geometry_rows", lambda: torch.cat([self.shape_basis * self.shape_sigma[:, None],
                                                               self.geometry_fixed]))

    @property
    def albedo_rows(self) -> torch.Tensor:
        """(T + G, V*3): sigma-scaled texture basis stacked on the fixed albedo rows (cached)."""
        return self._cached("albedo_rows", lambda: torch.cat([self.texture_basis * self.texture_sigma[:, None],
                                                             self.albedo_fixed]))

    @property
    def hair_index(self) -> torch.Tensor:
        """Indices of the vertices that grey with age (cached)."""
        return self._cached("hair_index", lambda: torch.nonzero(self.hair > 0).flatten())

    def _cached(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per model."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def to(self, device: str | torch.device) -> "FaceModel":
        """A copy of the model on ``device``."""
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_cache"}
        kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        kw["device"] = torch.device(device)
        return FaceModel(**kw)

    def coarsened(self, stride: int) -> "FaceModel":
        """The same model on every ``stride``-th ring and segment of the skin grid (cached).

        Identities, factors and labels are the template's own, subsampled, so a face
        keeps its identity at every level of detail (see :func:`mesh.grid_subset`).
        """
        if stride == 1:
            return self
        return self._cached(f"stride{stride}", lambda: self._subset(stride))

    def _subset(self, stride: int) -> "FaceModel":
        index, sub = grid_subset(self.template, stride)
        idx = torch.as_tensor(index, device=self.device)

        def rows(a: torch.Tensor) -> torch.Tensor:
            return a.view(a.shape[0], -1, 3).index_select(1, idx).reshape(a.shape[0], -1)

        return FaceModel(
            template=sub, shape_names=self.shape_names, shape_sigma=self.shape_sigma,
            shape_basis=rows(self.shape_basis), texture_band=self.texture_band, texture_sigma=self.texture_sigma,
            texture_basis=rows(self.texture_basis), geometry_fixed=rows(self.geometry_fixed),
            albedo_fixed=rows(self.albedo_fixed), vertices=self.vertices[idx], base_albedo=self.base_albedo[idx],
            hair=self.hair[idx], face_labels=torch.as_tensor(face_labels(sub.labels, sub.faces), device=self.device),
            faces=torch.as_tensor(sub.faces, device=self.device), specular=self.specular[idx],
            normals_template=self.normals_template[idx], eye_mask=self.eye_mask[idx], device=self.device,
        )


# Row layout of geometry_fixed / albedo_fixed.
FIXED_ROWS: tuple[str, ...] = (
    ("gender",) + tuple(f"ethnicity_{e}" for e in ETHNICITIES) + ("age_linear", "age_wrinkles")
    + tuple(f"expression_{e}" for e in EXPRESSIONS)
)


def _albedo_template(t: Template, parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-vertex colour masks used to paint skin, lips, brows, hair and eyes."""
    p = t.vertices
    m = _mirror(p)
    aperture = np.linalg.norm((m - (EYE_CENTRE + [0, 0, 0.14])) / [0.115, 0.047, 0.12], axis=1)
    lash = np.exp(-(((aperture - 1.0) / 0.18) ** 2)) * (m[:, 2] > 0.6) * t.skin
    nostril = np.linalg.norm((m - [0.052, -0.385, 1.0]) / [0.04, 0.04, 0.06], axis=1) < 1.0
    return {"lash": lash, "nostril": nostril.astype(float)}


@lru_cache(maxsize=4)
def _build_numpy(seed: int, shape_components: int, texture_components: int, texture_bands: int,
                 rings: int, segments: int) -> dict[str, np.ndarray]:
    t = build_template(rings, segments)
    rng = np.random.default_rng([seed, 1811])
    p = t.vertices
    # Eyeballs move rigidly with the displacement at their centre.
    anchors = p.copy()
    for k, side in ((1, 1.0), (2, -1.0)):
        anchors[t.eye == k] = EYE_CENTRE * [side, 1, 1]
    nv = len(p)

    named = anatomical_fields(anchors)
    raw = list(named.values())
    names = list(named.keys())
    if shape_components > len(raw):
        extra = shape_components - len(raw)
        raw += [_radial(0.012 * f, p, t.skin) for f in _random_fields(anchors, extra, rng, p[t.skin])]
        names += [f"random_{i}" for i in range(extra)]
    raw_arr = np.stack(raw)[:shape_components].reshape(shape_components, -1)
    names = names[:shape_components]
    # Pivoted Gram-Schmidt: each step keeps the field with the largest residual,
    # so sigma (the residual norms) decays by construction.
    _, _, order = scipy.linalg.qr(raw_arr.T, mode="economic", pivoting=True)
    q, sig = _orthonormal(raw_arr[order])

    tex, band_of = _texture_fields(p, texture_bands, texture_components, rng)
    tex[:, ~t.skin] = 0.0
    tex = tex.reshape(len(tex), -1)
    tq, _ = _orthonormal(tex)
    n_skin = int(t.skin.sum())
    k_in_band = np.tile(np.arange(texture_components), texture_bands)
    weight = 1.0 / (1.0 + k_in_band / 8.0)
    band_total = np.array([0.038, 0.028, 0.022, 0.015, 0.011, 0.008, 0.006, 0.005])[band_of]
    rms = band_total * np.sqrt(weight / np.sum(weight[band_of == 0]))
    tsig = rms * np.sqrt(3 * n_skin)

    parts = part_distances(p)
    paint = _albedo_template(t, parts)
    lab = t.labels
    base = np.zeros((nv, 3))
    skin_tone = np.array([0.86, 0.68, 0.58])
    base[:] = skin_tone
    base[lab == PART["mouth"]] = skin_tone * [0.9, 0.6, 0.6]
    base[lab == PART["ears"]] = skin_tone * [1.0, 0.92, 0.9]
    hair_colour = np.array([0.3, 0.22, 0.15])
    base[lab == PART["hair"]] = hair_colour
    brow = (lab == PART["left_brow"]) | (lab == PART["right_brow"])
    base[brow] = 0.35 * skin_tone + 0.65 * hair_colour
    base[t.mouth_line] = [0.18, 0.06, 0.06]
    base *= 1.0 - 0.6 * paint["lash"][:, None]
    base[paint["nostril"] > 0] *= 0.4
    cheeks = _bump(_mirror(p), (0.42, -0.3, 0.6), (0.15, 0.15, 0.2))
    base += cheeks[:, None] * [0.04, -0.02, -0.02]
    ang = t.eye_angle
    eye = t.eye > 0
    iris = np.array([0.33, 0.24, 0.16])
    base[eye] = [0.9, 0.88, 0.84]
    base[eye & (ang <= 24.0)] = iris
    base[eye & (ang <= 11.0)] = [0.03, 0.03, 0.03]
    hair = (lab == PART["hair"]).astype(float)

    # Intrinsic factors. Gender: +1 male, -1 female, times strength.
    gender_geo = 0.5 * (1.2 * named["jaw_width"] + 1.2 * named["brow_ridge"] + 0.8 * named["chin_height"]
                        + 0.8 * named["nose_protrusion"] + 0.6 * named["nose_width"] - 1.0 * named["lip_fullness"]
                        - 0.6 * named["eye_depth"] * -1 + 0.6 * named["head_width"] + 0.5 * named["forehead_slope"] * -1)
    beard = (_bump(p, (0, -0.75, 0.6), (0.45, 0.3, 0.35)) + _bump(p, (0, -0.46, 0.9), (0.16, 0.05, 0.1)))
    beard = np.clip(beard, 0, 1) * (lab == PART["skin"]) * t.skin
    gender_alb = np.zeros((nv, 3))
    gender_alb += beard[:, None] * [-0.07, -0.065, -0.05]
    gender_alb += (t.skin & (lab == PART["skin"]))[:, None] * [-0.01, -0.025, -0.025]
    gender_alb[brow] += [-0.06, -0.05, -0.04]
    gender_alb[lab == PART["mouth"]] += [-0.05, 0.02, 0.02]
    gender_alb += paint["lash"][:, None] * 0.08

    eth_geo = {
        "A": 0.8 * named["nose_bridge"] - 0.6 * named["nose_width"] - 0.5 * named["lip_fullness"] + 0.5 * named["nose_protrusion"],
        "B": -0.9 * named["nose_bridge"] + 0.7 * named["cheekbones"] - 0.7 * named["eye_depth"] * -1 - 0.6 * named["brow_ridge"] + 0.5 * named["head_width"],
        "C": 1.0 * named["nose_width"] + 1.0 * named["lip_fullness"] - 0.4 * named["nose_bridge"] + 0.5 * named["mouth_height"] * 0 + 0.6 * named["chin_protrusion"],
    }
    tones = {"A": ([0.86, 0.68, 0.58], [0.33, 0.24, 0.16], [0.3, 0.4, 0.5]),
             "B": ([0.74, 0.55, 0.41], [0.1, 0.085, 0.075], [0.25, 0.16, 0.09]),
             "C": ([0.47, 0.32, 0.23], [0.07, 0.06, 0.055], [0.17, 0.1, 0.06])}
    eth_alb = {}
    skin_like = t.skin & (lab != PART["hair"])
    for e, (tone, hair_c, iris_c) in tones.items():
        off = np.zeros((nv, 3))
        ratio = np.asarray(tone) / skin_tone
        off[skin_like] = base[skin_like] * (ratio - 1.0)
        off[lab == PART["hair"]] = np.asarray(hair_c) - hair_colour
        off[brow] += 0.65 * (np.asarray(hair_c) - hair_colour)
        off[eye & (ang <= 24.0) & (ang > 11.0)] = np.asarray(iris_c) - iris
        eth_alb[e] = off

    # Age: a = (age - 30) / 40 (shape), w = clip((age - 25) / 45, 0, 1) (wrinkles, blotches).
    age_geo = (_bump(_mirror(p), (0.4, -0.72, 0.35), (0.2, 0.16, 0.25))[:, None] * [0, -0.03, 0.008]
               - 0.6 * named["cheek_fullness"] + 0.5 * named["nose_length"] - 0.5 * named["lip_fullness"]
               + 0.4 * named["ear_size"])
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    front = (z > 0.3) & t.skin & (lab == PART["skin"])
    forehead = _bump(p, (0, 0.42, 0.75), (0.35, 0.12, 0.3)) * (np.cos(y * 70.0) > 0.6)
    crow = _bump(_mirror(p), (0.5, 0.08, 0.55), (0.07, 0.07, 0.15)) * (np.cos(np.arctan2(y - 0.08, np.abs(x) - 0.42) * 9.0) > 0.5)
    fold = np.exp(-(((np.abs(x) - (0.13 + 0.1 * np.clip((-0.35 - y) / 0.25, 0, 1))) / 0.018) ** 2)) * ((y < -0.33) & (y > -0.62))
    blotch = sum(np.cos(p @ rng.normal(scale=40.0, size=3) + rng.uniform(0, 6.3)) for _ in range(6)) / 6.0
    wrinkle = (0.55 * forehead + 0.5 * crow + 0.45 * fold) * front
    age_alb = -(wrinkle[:, None] * np.array([0.16, 0.16, 0.14])) + (blotch * front)[:, None] * np.array([0.05, 0.035, 0.03])

    aus = action_unit_fields(anchors, t.mouth_line)
    expr_geo = []
    for e in EXPRESSIONS:
        acc = np.zeros((nv, 3))
        for au, wgt in EXPRESSION_AUS[e].items():
            acc += wgt * aus[au]
        expr_geo.append(acc)
    geo_fixed = [gender_geo] + [eth_geo[e] for e in ETHNICITIES] + [age_geo, np.zeros((nv, 3))] + expr_geo
    alb_fixed = [gender_alb] + [eth_alb[e] for e in ETHNICITIES] + [np.zeros((nv, 3)), age_alb] + [np.zeros((nv, 3))] * len(EXPRESSIONS)

    spec = np.full(nv, 0.18)
    spec[lab == PART["mouth"]] = 0.3
    spec[lab == PART["hair"]] = 0.08
    spec[eye] = 0.7
    normals = _vertex_normals_np(p, t.faces)
    return {
        "shape_names": np.asarray(names)[order],
        "shape_sigma": sig,
        "shape_basis": q,
        "texture_band": band_of,
        "texture_sigma": tsig,
        "texture_basis": tq,
        "geometry_fixed": np.stack(geo_fixed).reshape(len(geo_fixed), -1),
        "albedo_fixed": np.stack(alb_fixed).reshape(len(alb_fixed), -1),
        "base_albedo": base,
        "hair": hair,
        "face_labels": face_labels(lab, t.faces),
        "specular": spec,
        "normals": normals,
    }


def _vertex_normals_np(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)


def build_face_model(
    seed: int = 0,
    shape_components: int = 64,
    texture_components: int = 64,
    texture_bands: int = 5,
    rings: int = 100,
    segments: int = 128,
    device: str | torch.device = "cpu",
) -> FaceModel:
    """Build (and cache per process) the face model for a generator configuration."""
    d = _build_numpy(seed, shape_components, texture_components, texture_bands, rings, segments)
    t = build_template(rings, segments)
    f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    return FaceModel(
        template=t,
        shape_names=tuple(str(n) for n in d["shape_names"]),
        shape_sigma=f32(d["shape_sigma"]),
        shape_basis=f32(d["shape_basis"]),
        texture_band=torch.as_tensor(d["texture_band"], device=device),
        texture_sigma=f32(d["texture_sigma"]),
        texture_basis=f32(d["texture_basis"]),
        geometry_fixed=f32(d["geometry_fixed"]),
        albedo_fixed=f32(d["albedo_fixed"]),
        vertices=f32(t.vertices),
        base_albedo=f32(d["base_albedo"]),
        hair=f32(d["hair"]),
        face_labels=torch.as_tensor(d["face_labels"], device=device),
        faces=torch.as_tensor(t.faces, device=device),
        specular=f32(d["specular"]),
        normals_template=f32(d["normals"]),
        eye_mask=torch.as_tensor(~t.skin, device=device),
        device=torch.device(device),
    )


def model_from_config(generator: dict, device: str | torch.device = "cpu") -> FaceModel:
    """Build the face model described by the ``stimuli.generator`` config section."""
    return build_face_model(
        seed=int(generator.get("seed", 0)),
        shape_components=int(generator.get("shape_components", 64)),
        texture_components=int(generator.get("texture_components", 64)),
        texture_bands=int(generator.get("texture_bands", 5)),
        rings=int(generator.get("mesh", {}).get("rings", 100)),
        segments=int(generator.get("mesh", {}).get("segments", 128)),
        device=device,
    )


__all__ = ["FaceModel", "build_face_model", "model_from_config", "GENERATOR_VERSION", "PART_NAMES", "FIXED_ROWS"]
