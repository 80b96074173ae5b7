"""The face model: template, identity bases, and the fields of sex, ethnicity, age, hair style and expression.

Shape and albedo are linear in a coefficient vector per face:

* shape: ``template + Q^T diag(sigma) c + sum_g w_g G_g`` where the rows of ``Q`` are the
  principal components of the identity fields (named anatomical deformations, scaled so
  that sampled identities match Farkas' anthropometric norms, plus random smooth fields)
  and the fixed rows ``G`` are male, female, the ethnic groups, age, hair styles, the short hair's
  sex difference, expressions (sums of FACS action units) and the mouth's opening;
* albedo: ``base + T^T diag(tau) t + sum_g w_g A_g``, ``T`` the principal components of the
  identity texture fields within each spatial-frequency band.

Identity is the pair of coefficient vectors (c, t), drawn from N(0, I). A built model is
cached on disk (``$INFODISSECT_CACHE``, default ``~/.cache/infodissect``), keyed by its
configuration and the source of this package's face modules.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from . import albedo as alb
from .factors import ETHNICITIES, EXPRESSIONS, HAIR_STYLES
from .fields import (EXPRESSION_AUS, OPENING_AUS, action_unit_fields, age_fields, anatomical_fields, larynx, lip_split,
                     random_fields, sex_fields)
from .mesh import (EYE_CENTRE, HAIR, LEFT_EYE, LOWER_TEETH, PART_NAMES, RIGHT_EYE, SKIN, TORSO,
                   UPPER_TEETH, Template, build_template, face_labels, face_spacing, grid_subset,
                   hidden_faces)
from .version import GENERATOR_VERSION  # (re-exported)

# Row layout of geometry_fixed / albedo_fixed (and of :func:`.render.fixed_coefficients`).
FIXED_ROWS: tuple[str, ...] = (
    ("male", "female") + tuple(f"ethnicity_{e}" for e in ETHNICITIES) + ("age_linear", "age_sag")
    + tuple(f"hair_{h}" for h in HAIR_STYLES) + ("short_hair_sex",) + tuple(f"expression_{e}" for e in EXPRESSIONS)
    + tuple(f"opening_{au}" for au in OPENING_AUS)
)

# Anthropometric norms (mm) of young adults (North American Caucasians, 18-25 years; Farkas 1994,
# "Anthropometry of the head and face", as tabulated by Farkas et al. 2005): male mean, SD,
# female mean, SD. Paired landmarks are measured between the left point and its mirror image.
NORMS: dict[str, tuple[str, str, float, float, float, float]] = {
    "zy-zy": ("zy", "zy'", 137.1, 4.3, 129.9, 4.6),  # face width
    "go-go": ("go", "go'", 97.4, 6.7, 91.1, 5.4),  # mandible width
    "n-gn": ("n", "gn", 121.3, 6.8, 112.0, 5.2),  # face height
    "n-sn": ("n", "sn", 54.8, 3.3, 50.6, 3.1),  # nose height
    "en-en": ("en", "en'", 33.3, 2.7, 31.8, 2.3),  # intercanthal width
    "ex-ex": ("ex", "ex'", 91.2, 3.2, 87.8, 3.2),  # biocular width
    "al-al": ("al", "al'", 34.9, 2.1, 31.4, 2.0),  # nose width
    "ch-ch": ("ch", "ch'", 53.3, 3.3, 50.2, 3.2),  # mouth width
}
MM = 0.01  # model units (decimetres) per mm
# Differences (mm) of the group means from group A, and named fields' offsets (in SDs) beyond them.
ETHNIC_SHAPE: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "A": ({}, {}),
    "B": ({"en-en": 4.0, "zy-zy": 6.0, "al-al": 3.5, "ex-ex": 3.0, "n-sn": -2.0},
          {"nose_bridge": -2.0, "eye_depth": -1.2, "brow_ridge": -1.2, "cheekbones": 1.2, "head_length": -1.0,
           "nose_protrusion": -1.0}),
    "C": ({"al-al": 9.0, "ch-ch": 4.0, "en-en": 2.0, "zy-zy": 3.0, "n-sn": -2.0},
          {"upper_lip": 2.0, "lower_lip": 2.0, "nose_bridge": -1.5, "nose_protrusion": -1.2,
           "chin_protrusion": -0.8, "forehead_slope": 1.0}),
}


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
    geometry_fixed: torch.Tensor  # (G, V*3): the FIXED_ROWS
    albedo_fixed: torch.Tensor  # (G, V*3)
    vertices: torch.Tensor  # (V, 3) template
    base_albedo: torch.Tensor  # (V, 3) display-referred
    hair: torch.Tensor  # (V,) how much each vertex greys with age
    face_labels: torch.Tensor  # (F,) uint8 part label of each face drawn
    faces: torch.Tensor  # (F, 3) int64: the template's faces but those no pose shows (mesh.hidden_faces)
    specular: torch.Tensor  # (V,) specular strength
    normals_template: torch.Tensor  # (V, 3) outward normals of the template (used for the rigid parts)
    neighbours: torch.Tensor  # (V, 4) int64 left, right, up, down vertices of the normals (-1: rigid)
    device: torch.device
    action_units: tuple[str, ...] = ()  # FACS action units of au_geometry / au_albedo
    au_geometry: torch.Tensor | None = None  # (A, V*3) each action unit at intensity 1
    au_albedo: torch.Tensor | None = None  # (A, V*3)
    texture_index: torch.Tensor | None = None  # (T',) the identity texture components drawn (None: all)
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
    def geometry_columns(self) -> torch.Tensor:
        """(V*3, K + G): :attr:`geometry_rows` transposed, contiguous (cached): the layout the CPU multiplies by."""
        return self._cached("geometry_columns", lambda: torch.cat([self.shape_basis * self.shape_sigma[:, None],
                                                                  self.geometry_fixed]).T.contiguous())

    @property
    def albedo_columns(self) -> torch.Tensor:
        """(V*3, T + G): :attr:`albedo_rows` transposed, contiguous (cached)."""
        return self._cached("albedo_columns", lambda: torch.cat([self.texture_basis * self.texture_sigma[:, None],
                                                                self.albedo_fixed]).T.contiguous())

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
        """The same model on every ``stride``-th ring and segment of each grid (cached).

        Identities, factors and labels are the template's own, subsampled, so a face
        keeps its identity at every level of detail (see :func:`mesh.grid_subset`). Texture
        bands too fine for the coarser vertex spacing (wavelengths under two vertex
        spacings of the inner face, :func:`mesh.face_spacing`) are left out, as a mipmap
        filters them.
        """
        if stride == 1:
            return self
        return self._cached(f"stride{stride}", lambda: self._subset(stride))

    def drawn(self) -> "FaceModel":
        """The same model restricted to the vertices a render reads (cached): the corners of the
        faces drawn and the neighbours their normals are taken from, in their order.

        Faces keep their order and vertices theirs, and each column of the matrix products is
        computed alone, so a render of ``drawn()`` is that of the model, with a tenth fewer
        columns to compute at stride 2. Vertices kept only as neighbours are marked rigid (their
        normal is never read). ``template`` stays the level's own.
        """
        return self._cached("drawn", self._drawn)

    def _drawn(self) -> "FaceModel":
        corners = torch.unique(self.faces.flatten())
        around = self.neighbours[corners].flatten()
        keep = torch.unique(torch.cat([corners, around[around >= 0]]))
        if len(keep) == self.n_vertices:
            return self
        new = torch.full((self.n_vertices,), -1, dtype=torch.long, device=self.device)
        new[keep] = torch.arange(len(keep), device=self.device)
        neighbours = torch.where(self.neighbours[keep] >= 0, new[self.neighbours[keep].clamp(min=0)],
                                 torch.full_like(self.neighbours[keep], -1))
        corner = torch.zeros(self.n_vertices, dtype=torch.bool, device=self.device)
        corner[corners] = True
        neighbours[~corner[keep]] = -1  # only a neighbour: rigid, its normal never read
        cols = (keep[:, None] * 3 + torch.arange(3, device=self.device)).flatten()

        def rows(a: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None else a[:, cols].contiguous()

        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_cache"}
        kw.update(shape_basis=rows(self.shape_basis), texture_basis=rows(self.texture_basis),
                  geometry_fixed=rows(self.geometry_fixed), albedo_fixed=rows(self.albedo_fixed),
                  au_geometry=rows(self.au_geometry), au_albedo=rows(self.au_albedo), vertices=self.vertices[keep],
                  base_albedo=self.base_albedo[keep], hair=self.hair[keep], specular=self.specular[keep],
                  normals_template=self.normals_template[keep], neighbours=neighbours, faces=new[self.faces])
        return FaceModel(**kw)

    def _subset(self, stride: int) -> "FaceModel":
        index, sub = grid_subset(self.template, stride)
        idx = torch.as_tensor(index, device=self.device)
        drawn = sub.faces[~hidden_faces(sub)]

        def rows(a: torch.Tensor) -> torch.Tensor:
            return a.view(a.shape[0], -1, 3).index_select(1, idx).reshape(a.shape[0], -1)

        nyquist = 2 * face_spacing(sub)  # shortest wavelength the coarser vertex sampling carries
        keep = torch.nonzero(texture_band_wavelength(self.texture_band) >= nyquist).flatten()
        if len(keep) == 0:
            keep = torch.nonzero(self.texture_band == 0).flatten()
        return FaceModel(
            template=sub, shape_names=self.shape_names, shape_sigma=self.shape_sigma,
            shape_basis=rows(self.shape_basis), texture_band=self.texture_band[keep],
            texture_sigma=self.texture_sigma[keep], texture_basis=rows(self.texture_basis[keep]),
            texture_index=keep, geometry_fixed=rows(self.geometry_fixed),
            albedo_fixed=rows(self.albedo_fixed), vertices=self.vertices[idx], base_albedo=self.base_albedo[idx],
            hair=self.hair[idx], face_labels=torch.as_tensor(face_labels(sub.labels, drawn), device=self.device),
            faces=torch.as_tensor(drawn, device=self.device), specular=self.specular[idx],
            normals_template=self.normals_template[idx],
            neighbours=torch.as_tensor(sub.neighbours, device=self.device), device=self.device,
            action_units=self.action_units, au_geometry=rows(self.au_geometry), au_albedo=rows(self.au_albedo),
        )


def texture_band_wavelength(band: torch.Tensor) -> torch.Tensor:
    """Shortest wavelength (decimetres) of the texture fields of each band (see
    :func:`.albedo.identity_texture_fields`)."""
    return 2 * np.pi / (5.0 * 2.0 ** band.double())


# --------------------------------------------------------------------------- anchors and landmarks


def anchors(t: Template) -> np.ndarray:
    """Where each vertex samples the deformation fields (see :mod:`.fields`)."""
    a = t.vertices.copy()
    for kind, side in ((LEFT_EYE, 1.0), (RIGHT_EYE, -1.0)):
        a[t.kind == kind] = EYE_CENTRE * [side, 1, 1]
    lower, floor, roof, upper = t.mouth_ring_vertices()
    centre = upper[np.argmax(t.vertices[upper, 2])]  # where the lips meet on the midline
    a[t.kind == UPPER_TEETH] = t.vertices[centre] + [0.0, 0.01, 0.0]
    a[t.kind == LOWER_TEETH] = t.vertices[centre] + [0.0, -0.01, 0.0]
    a[floor], a[roof] = a[lower], a[upper]  # the cavity moves with its lip
    hair = t.kind == HAIR
    hair_dirs = t.directions[hair]
    from .mesh import head_sdf, radial_extract

    a[hair] = hair_dirs * radial_extract(hair_dirs, head_sdf)[:, None]
    a[t.kind == TORSO] = [0.0, -1.35, -0.2]
    return a


def mirror_index(t: Template, i: int | np.ndarray) -> int | np.ndarray:
    """The vertex (or vertices, for an array) of the skin grid mirroring vertex ``i`` across the midline."""
    g = t.grid("skin")
    r, s = divmod(i - g.start, g.segments)
    return g.start + r * g.segments + (g.segments - 1 - s)


def landmark_pairs(t: Template) -> dict[str, tuple[int, int]]:
    """The vertex pair of each distance in :data:`NORMS`."""
    lm = dict(t.landmarks)
    for k in list(lm):
        lm[k + "'"] = mirror_index(t, lm[k])
    return {name: (lm[a], lm[b]) for name, (a, b, *_) in NORMS.items()}


def distances(vertices: np.ndarray, pairs: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Landmark distances (mm) of one or more meshes (..., V, 3)."""
    return {k: np.linalg.norm(vertices[..., i, :] - vertices[..., j, :], axis=-1) / MM for k, (i, j) in pairs.items()}


def _gradients(vertices: np.ndarray, pairs: dict[str, tuple[int, int]], fields_: np.ndarray) -> np.ndarray:
    """(D, N): first-order change (mm) of each distance under each field (N, V, 3)."""
    out = []
    for i, j in pairs.values():
        u = vertices[i] - vertices[j]
        u /= np.linalg.norm(u)
        out.append((fields_[:, i] - fields_[:, j]) @ u / MM)
    return np.asarray(out)


def _fit(jac: np.ndarray, target: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge least squares ``argmin |J b - target|^2 + ridge |b|^2``."""
    k = jac.shape[1]
    a = np.vstack([jac, np.sqrt(ridge) * np.eye(k)])
    return np.linalg.lstsq(a, np.concatenate([target, np.zeros(k)]), rcond=None)[0]


def calibrate_shape(t: Template, named: dict[str, np.ndarray], random: list[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Fit the mean face, the identity spread and the sex difference to :data:`NORMS`.

    Returns ``(mean_offset (V, 3), amplitude (N_named,), sex (V, 3), ethnic offsets)``: the
    template plus ``mean_offset`` has the mean of the male and female norms (and half the Adam's apple,
    :func:`.fields.larynx`); named field k
    scaled by ``amplitude[k]`` (with the random fields) gives every distance the average of
    the two SDs; ``sex`` (male minus female at gender_strength 1) gives the norms' sex
    differences, with the features beyond them of :func:`.fields.sex_fields` (brow ridge and brows,
    cheeks, nose, chin and jaw angle, lips, neck and Adam's apple, shoulders).
    """
    pairs = landmark_pairs(t)
    names = list(named)
    f = np.stack([named[k] for k in names])
    jac = _gradients(t.vertices, pairs, f)  # (D, N)
    d0 = np.array([v for v in distances(t.vertices, pairs).values()])
    norms = np.array([n[2:] for n in NORMS.values()])
    mean_target = 0.5 * (norms[:, 0] + norms[:, 2])
    offset_coef = _fit(jac, mean_target - d0, 0.5)
    mean_offset = np.tensordot(offset_coef, f, 1) + 0.5 * larynx(t.vertices, t.kind)  # no landmark moves
    sd_target = np.sqrt(0.5 * (norms[:, 1] ** 2 + norms[:, 3] ** 2))
    rand_var = (_gradients(t.vertices, pairs, np.stack(random)) ** 2).sum(1) if random else np.zeros(len(pairs))
    # Variance of distance d is sum_k a_k^2 J_dk^2 (+ the random fields'): linear in a^2.
    a = jac**2 / sd_target[:, None] ** 2
    b = 1.0 - rand_var / sd_target**2
    reg = 0.02
    import scipy.optimize  # here: importing it costs about a second at every start-up

    sol = scipy.optimize.lsq_linear(np.vstack([a, np.sqrt(reg) * np.eye(len(names))]),
                                    np.concatenate([b, np.sqrt(reg) * np.ones(len(names))]), bounds=(0.0, 16.0))
    amplitude = np.sqrt(sol.x)
    scaled = f * amplitude[:, None, None]
    jac_s = jac * amplitude[None, :]
    extra = sex_fields({k: scaled[i] for i, k in enumerate(names)}, t.vertices, t.kind)
    sex_target = (norms[:, 0] - norms[:, 2]) - _gradients(t.vertices, pairs, extra[None])[:, 0]
    sex = extra + np.tensordot(_fit(jac_s, sex_target, 0.3), scaled, 1)
    ethnic = {}
    for group, (diffs, offsets) in ETHNIC_SHAPE.items():
        base = sum((w * scaled[names.index(k)] for k, w in offsets.items()), np.zeros_like(t.vertices))
        target = np.array([diffs.get(k, 0.0) for k in NORMS]) - _gradients(t.vertices, pairs, base[None])[:, 0]
        ethnic[group] = base + np.tensordot(_fit(jac_s, target, 0.3), scaled, 1)
    return mean_offset, amplitude, sex, ethnic


# --------------------------------------------------------------------------- bases


def principal_components(raw: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal rows (k, D) and standard deviations (k,) of sum_i c_i raw_i with c ~ N(0, I)."""
    _, sigma, vt = np.linalg.svd(raw, full_matrices=False)
    basis, sigma = vt[:k], sigma[:k]
    basis *= np.sign(basis[np.arange(len(basis)), np.argmax(np.abs(basis), 1)])[:, None]
    return basis, sigma


def _vertex_normals_np(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)


def _expression_rows(aus: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each expression's row: its action units' fields weighted as in :data:`.fields.EXPRESSION_AUS`, except
    those that open the mouth (:data:`.fields.OPENING_AUS`), whose rows follow, one per unit (an action unit
    missing from ``aus`` contributes nothing)."""
    zero = np.zeros_like(next(iter(aus.values())))
    rows = [sum((w * aus.get(au, zero) for au, w in EXPRESSION_AUS[e].items() if au not in OPENING_AUS), zero)
            for e in EXPRESSIONS]
    return rows + [aus.get(au, zero) for au in OPENING_AUS]


def _ethnic_albedo(t: Template, base: np.ndarray, mk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Albedo offsets of each ethnic group from the template (group A): skin tone, hair, brows and irises."""
    out = {}
    skin = (t.kind == SKIN)[:, None]
    hair = mk["hair"][:, None]
    scalp = mk["scalp"][:, None] * alb.SCALP_HAIR * alb.HAIR_COLOUR  # the hair share of a skin vertex's colour
    iris = mk["iris"] > 0
    ref_skin, ref_hair, ref_iris = (np.asarray(c) for c in alb.ETHNIC_TONES["A"])
    for group, (tone, hair_c, iris_c) in alb.ETHNIC_TONES.items():
        skin_ratio, hair_ratio = np.asarray(tone) / ref_skin, np.asarray(hair_c) / ref_hair
        # Skin scales by the skin ratio, the hair painted on it by the hair ratio; the hair shell by the latter.
        off = skin * (base * (skin_ratio - 1.0) + scalp * (hair_ratio - skin_ratio)) + hair * base * (hair_ratio - 1.0)
        off += (mk["brow"] * 0.8)[:, None] * (np.asarray(hair_c) - ref_hair)
        off[iris] = base[iris] * (np.asarray(iris_c) / ref_iris - 1.0)
        out[group] = off
    return out


def _shape_model(t: Template, anc: np.ndarray, rng: np.random.Generator, components: int
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray],
                            np.ndarray, np.ndarray]:
    """Identity shape: the named anatomical fields and random fields (skin and hair only), calibrated to the
    norms; returns (named fields, their amplitudes, mean offset, sex difference, ethnic offsets, PCA basis, sds)."""
    named = anatomical_fields(anc, t.kind)
    skin = t.kind == SKIN
    random = random_fields(anc, max(0, components - len(named)), rng, t.vertices[skin])
    random = [np.where(np.isin(t.kind, (SKIN, HAIR))[:, None], r, 0.0) for r in random]
    mean_offset, amplitude, sex, ethnic = calibrate_shape(t, named, random)
    raw = [amplitude[i] * f for i, f in enumerate(named.values())] + random
    basis, sigma = principal_components(np.stack(raw).reshape(len(raw), -1), components)
    return named, amplitude, mean_offset, sex, ethnic, basis, sigma


def _texture_model(t: Template, mk: dict[str, np.ndarray], rng: np.random.Generator, bands: int, components: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identity texture: PCA of the banded skin fields, band by band, each orthogonal to the coarser bands;
    returns (basis, sds, band of each component)."""
    tex, band_of, _ = alb.identity_texture_fields(t, mk, bands, components, rng)
    basis, sigma, band = [], [], []
    for j in range(bands):
        rows = tex[band_of == j].reshape((band_of == j).sum(), -1)
        for q in basis:
            rows = rows - (rows @ q.T) @ q
        q, sd = principal_components(rows, components)
        basis.append(q)
        sigma.append(sd)
        band.append(np.full(len(sd), j))
    return np.concatenate(basis), np.concatenate(sigma), np.concatenate(band)


def _hair_rows(t: Template) -> list[np.ndarray]:
    """Each hair style's displacement of the hair shell from the short style, then the ``short_hair_sex`` row:
    a man's half of the short hair's sex difference (a woman's is its negative; long hair has none)."""
    from .mesh import hair_shell

    hair = t.kind == HAIR
    grid = t.grid("hair")
    dirs, radii, diff, _ = hair_shell(grid.rings, grid.segments)
    assert np.array_equal(dirs, t.directions[hair]), "the template's hair vertices are the shell's rays, in order"
    rows = []
    for style in HAIR_STYLES:
        row = np.zeros_like(t.vertices)
        row[hair] = dirs * (radii[style] - radii["short"])[:, None]
        rows.append(row)
    short_sex = np.zeros_like(t.vertices)
    short_sex[hair] = -0.5 * dirs * diff[:, None]
    return rows + [short_sex]


def _build(seed: int, shape_components: int, texture_components: int, texture_bands: int, rings: int,
           segments: int) -> dict[str, np.ndarray]:
    """Every array of the face model (see :class:`FaceModel`), in NumPy: the template, the identity shape and
    texture models, then the fixed rows (sex, ethnicity, age, hair style, expressions) of geometry and albedo
    in the order of :data:`FIXED_ROWS`. One generator (``seed``) draws every random field, in this order."""
    t = build_template(rings, segments)
    rng = np.random.default_rng([seed, 1811])
    anc = anchors(t)
    named, amplitude, mean_offset, sex, ethnic, shape_basis, shape_sigma = _shape_model(t, anc, rng, shape_components)
    mk = alb.masks(t, anc)
    base = alb.template_albedo(t, mk)
    tex_basis, tex_sigma, tex_band = _texture_model(t, mk, rng, texture_bands, texture_components)

    aus = action_unit_fields(anc, lip_split(t, anc), t.kind)
    age_linear, age_sag = age_fields({k: amplitude[i] * f for i, (k, f) in enumerate(named.items())}, anc)
    age_alb_linear, age_alb_sag = alb.age_albedo(t, mk, rng)
    male_alb, female_alb = alb.sex_albedo(t, mk)
    au_alb = alb.action_unit_albedo(t, mk)
    eth_alb = _ethnic_albedo(t, base, mk)
    hair_rows = _hair_rows(t)
    zero = np.zeros_like(t.vertices)
    geo = ([0.5 * sex, -0.5 * sex] + [ethnic[e] for e in ETHNICITIES] + [age_linear, age_sag] + hair_rows
           + _expression_rows(aus))
    colour = ([male_alb, female_alb] + [eth_alb[e] for e in ETHNICITIES] + [age_alb_linear, age_alb_sag]
              + [zero] * (len(HAIR_STYLES) + 1) + _expression_rows(au_alb))
    assert len(geo) == len(colour) == len(FIXED_ROWS), "the fixed rows are built in the order of FIXED_ROWS"
    au_names = list(aus)
    vertices = t.vertices + mean_offset
    normals = _vertex_normals_np(vertices, t.faces)
    # Ambient occlusion of the mean face, baked into the template's colours and every fixed colour row (eye
    # sockets, nostrils, the neck under the jaw): a per-vertex factor, so it costs nothing at render time. The
    # identity texture basis stays orthonormal (its faint variation is left unshaded).
    # The teeth and the oral cavity, enclosed while the mouth is shut, keep their own painted shading.
    ao = alb.ambient_occlusion(vertices, t.faces, normals, t.labels)
    ao[np.isin(t.kind, (UPPER_TEETH, LOWER_TEETH)) | (t.labels == PART_NAMES.index("mouth_interior"))] = 1.0
    occ = alb.occlusion_scale(ao)
    base = base * occ[:, None]
    colour = [c * occ[:, None] for c in colour]
    au_alb = {k: c * occ[:, None] for k, c in au_alb.items()}
    return {
        "vertices": vertices,
        "shape_names": np.asarray([f"pc{k}" for k in range(len(shape_sigma))]),
        "shape_sigma": shape_sigma,
        "shape_basis": shape_basis,
        "texture_band": tex_band,
        "texture_sigma": tex_sigma,
        "texture_basis": tex_basis,
        "geometry_fixed": np.stack(geo).reshape(len(geo), -1),
        "albedo_fixed": np.stack(colour).reshape(len(colour), -1),
        "base_albedo": base,
        "hair": alb.hair_weight(t, mk),
        "face_labels": face_labels(t.labels, t.faces),
        "specular": alb.specular_strength(t, mk),
        "normals": normals,
        "field_amplitude": amplitude,
        "field_names": np.asarray(list(named)),
        "action_units": np.asarray(au_names),
        "au_geometry": np.stack([aus[a] for a in au_names]).reshape(len(au_names), -1),
        "au_albedo": np.stack([au_alb.get(a, zero) for a in au_names]).reshape(len(au_names), -1),
    }


# --------------------------------------------------------------------------- cache


def _source_digest() -> str:
    """Hash of the face modules' source (a cached model is rebuilt when the code changes)."""
    h = hashlib.sha256(GENERATOR_VERSION.encode())
    here = Path(__file__).parent
    for name in ("mesh.py", "fields.py", "albedo.py", "model.py", "factors.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Where built face models are cached: ``$INFODISSECT_CACHE`` or ``~/.cache/infodissect``."""
    return Path(os.environ.get("INFODISSECT_CACHE") or Path.home() / ".cache" / "infodissect") / "faces"


@lru_cache(maxsize=4)
def _build_cached(seed: int, shape_components: int, texture_components: int, texture_bands: int, rings: int,
                  segments: int) -> dict[str, np.ndarray]:
    """:func:`_build`, read from the disk cache when it holds this configuration (written atomically)."""
    key = json.dumps([seed, shape_components, texture_components, texture_bands, rings, segments, _source_digest()])
    path = cache_dir() / f"model-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    out = _read_cached(path)
    if out is not None:
        return out
    with _build_lock(path) as waited:  # jobs starting together on a new cache: one builds, the others wait
        out = _read_cached(path)
        if out is None and not waited:
            out = _build_and_store(path, seed, shape_components, texture_components, texture_bands, rings, segments)
    if out is None:  # the job waited for could not store its build (a full or read-only cache): build here
        out = _build_and_store(path, seed, shape_components, texture_components, texture_bands, rings, segments)
    return out


def _build_and_store(path: Path, seed: int, shape_components: int, texture_components: int, texture_bands: int,
                     rings: int, segments: int) -> dict[str, np.ndarray]:
    """:func:`_build` plus the template's arrays, stored at ``path`` (bases and rows as float32).

    Built on one BLAS thread: a multi-threaded SVD's last bits depend on the thread count, and every
    stimulus must be the same bit for bit wherever its model was built.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        out = _build(seed, shape_components, texture_components, texture_bands, rings, segments)
    out.update(_template_arrays(build_template(rings, segments)))
    # Bases and rows are float32 in the model: stored so, at half the size.
    rows = ("shape_basis", "texture_basis", "geometry_fixed", "albedo_fixed", "au_geometry", "au_albedo")
    out = {k: (v.astype(np.float32) if k in rows else v) for k, v in out.items()}
    _store(path, out)
    return out


def _read_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cached model, or None where it is absent or unreadable (a truncated file: built again
    and replaced)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    try:
        os.utime(path)  # most recently used: the last to be pruned (a read-only cache is still read)
    except OSError:
        pass
    return out


@contextmanager
def _build_lock(path: Path, timeout_s: float = 600.0) -> Iterator[bool]:
    """An exclusive lock on ``path``'s build (``flock`` on a file beside it, released by the system if the
    holder is killed); yields whether another job held it first. Without a writable cache, ``fcntl`` or
    ``flock`` support, or after ``timeout_s`` (a stopped holder), no lock: the caller builds for itself."""
    fh = None
    waited = False
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path.with_suffix(".lock"), "a")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path}: its build lock was held for over {timeout_s:.0f} s") from None
                time.sleep(0.2)
        os.utime(fh.name)  # in use: not a stale lock (see _prune)
    except (ImportError, OSError):
        if fh is not None:
            fh.close()
        fh, waited = None, True  # no lock: build for itself
    try:
        yield waited
    finally:
        if fh is not None:
            fh.close()


def _store(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` atomically (concurrent builders each through a file of their own) and
    prune the cache; a read-only or full cache is not an error."""
    from ..store import atomic_file

    try:
        with atomic_file(path, unique=True) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        _prune(path.parent, keep=8)
    except OSError:
        pass


def _prune(folder: Path, keep: int, stale_s: float = 3600.0) -> None:
    """Delete all but the ``keep`` most recently used cached models, and temporary files left by killed
    writers and the build locks of models no longer cached (older than ``stale_s`` seconds)."""
    files = sorted(folder.glob("model-*.npz"), key=lambda f: f.stat().st_mtime, reverse=True)
    for f in files[keep:]:
        f.unlink(missing_ok=True)
    now = time.time()
    stale = list(folder.glob("*.npz.partial")) + [f for f in folder.glob("model-*.lock")
                                                   if not f.with_suffix(".npz").exists()]
    for f in stale:  # build locks of models pruned (or never finished), once nobody can still hold them
        try:
            if now - f.stat().st_mtime > stale_s:
                f.unlink(missing_ok=True)
        except OSError:
            pass


_GRID_FIELDS = ("start", "rings", "segments", "cx", "cy", "cz", "rigid")


def _template_arrays(t: Template) -> dict[str, np.ndarray]:
    """The template as arrays (for the cache); :func:`_template_from` inverts it."""
    out = {f"template_{f.name}": getattr(t, f.name) for f in fields(t)
           if f.name not in ("grids", "landmarks", "mouth_rings")}
    out["template_grid_names"] = np.asarray([g.name for g in t.grids])
    out["template_grids"] = np.asarray([[g.start, g.rings, g.segments, *g.centre, g.rigid] for g in t.grids], float)
    out["template_mouth_rings"] = np.asarray(t.mouth_rings)
    out["template_landmark_names"] = np.asarray(list(t.landmarks))
    out["template_landmarks"] = np.asarray(list(t.landmarks.values()))
    return out


def _template_from(d: dict[str, np.ndarray]) -> Template:
    from .mesh import Grid

    grids = tuple(Grid(str(n), int(r[0]), int(r[1]), int(r[2]), (float(r[3]), float(r[4]), float(r[5])), bool(r[6]))
                  for n, r in zip(d["template_grid_names"], d["template_grids"]))
    kw = {f.name: d[f"template_{f.name}"] for f in fields(Template)
          if f.name not in ("grids", "landmarks", "mouth_rings")}
    return Template(**kw, grids=grids, mouth_rings=tuple(int(r) for r in d["template_mouth_rings"]),
                    landmarks={str(k): int(v) for k, v in zip(d["template_landmark_names"], d["template_landmarks"])})


def build_face_model(
    seed: int = 0,
    shape_components: int = 64,
    texture_components: int = 64,
    texture_bands: int = 5,
    rings: int = 100,
    segments: int = 128,
    device: str | torch.device = "cpu",
) -> FaceModel:
    """Build (or load from the cache) the face model for a generator configuration."""
    d = _build_cached(seed, shape_components, texture_components, texture_bands, rings, segments)
    t = _template_from(d)
    t = Template(**{**{f.name: getattr(t, f.name) for f in fields(t)}, "vertices": d["vertices"]})
    drawn = t.faces[~hidden_faces(t)]
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
        vertices=f32(d["vertices"]),
        base_albedo=f32(d["base_albedo"]),
        hair=f32(d["hair"]),
        face_labels=torch.as_tensor(face_labels(t.labels, drawn), device=device),
        faces=torch.as_tensor(drawn, device=device),
        specular=f32(d["specular"]),
        normals_template=f32(d["normals"]),
        neighbours=torch.as_tensor(t.neighbours, device=device),
        device=torch.device(device),
        action_units=tuple(str(a) for a in d["action_units"]),
        au_geometry=f32(d["au_geometry"]),
        au_albedo=f32(d["au_albedo"]),
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


__all__ = ["FaceModel", "build_face_model", "model_from_config", "GENERATOR_VERSION", "PART_NAMES", "FIXED_ROWS",
           "NORMS", "distances", "landmark_pairs"]
