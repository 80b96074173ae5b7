"""The template head: skin, eyeballs, teeth, a hair shell and a clothed torso.

Every surface but the rigid eyeballs and teeth is a *grid*: a latitude-longitude grid of
rays from a centre, each vertex at the outermost crossing of an implicit surface (smooth
unions of anatomical primitives) along its ray. A grid has sphere topology, so it is
closed, and as long as every triangle keeps its orientation about the centre (see
:func:`orientation_ok`) it is star-shaped and cannot intersect itself.

- **skin** (head and neck, centred in the head): cranium, face, jaw, chin, cheekbones,
  brow ridge, eye sockets closed by eyelids with almond-shaped openings, nose, lips and
  ears. Its grid holds four coincident rings on the mouth line: the inner edges of the
  upper and lower lips and, set back into the head, the roof and floor of the oral
  cavity; when the jaw drops they part into an open mouth.
- **hair** (a shell over the skin, same centre): the short style lies on the scalp; other
  styles are displacements of it (see :func:`hair_style_radii`). Where no style has hair
  the shell lies under the skin and its faces are dropped.
- **torso** (centred in the chest): shoulders and the collar of a shirt, which the neck
  enters.
- **eyeballs** and **teeth** (upper and lower arch): rigid meshes.

Units are decimetres (1 = 100 mm); x is the subject's left, y up, z out of the face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PART_NAMES: tuple[str, ...] = (
    "background",
    "skin",
    "left_eye",
    "right_eye",
    "left_brow",
    "right_brow",
    "nose",
    "mouth",
    "ears",
    "hair",
    "mouth_interior",
    "clothing",
)
PART = {name: i for i, name in enumerate(PART_NAMES)}

# Mesh components (Template.kind).
SKIN, LEFT_EYE, RIGHT_EYE, UPPER_TEETH, LOWER_TEETH, HAIR, TORSO = range(7)
GRIDS = ("skin", "hair", "torso")
EYES = (LEFT_EYE, RIGHT_EYE)  # the eyeball components

# Anatomical landmarks of the template (the androgynous mean face; decimetres).
EYE_CENTRE = np.array([0.315, 0.10, 0.64])
EYE_RADIUS = 0.122
PUPIL_DEG = 12.0
IRIS_DEG = 29.0
FISSURE = (0.168, 0.428, 0.038, 0.055)  # inner x, outer x, upper and lower lid heights of the eye opening
MOUTH_Y = -0.63
MOUTH_HALF_WIDTH = 0.26
MOUTH_DEPTH = 0.3  # how far the oral cavity reaches back from the lips
HEAD_CENTRE = np.zeros(3)
TORSO_CENTRE = np.array([0.0, -2.25, -0.2])
NECK = (0.0, -0.24, 0.53, 0.56)  # neck axis x, z and half-widths in x, z


@dataclass(frozen=True)
class Grid:
    """One latitude-longitude grid of a template: vertices ``start .. start + rings*segments + 2``
    (ring-major, then the south and north poles), rays from ``centre``."""

    name: str
    start: int
    rings: int
    segments: int
    centre: tuple[float, float, float]
    rigid: bool = False  # moves as a whole (the eyeballs): normals from the template

    @property
    def size(self) -> int:
        return self.rings * self.segments + 2


@dataclass(frozen=True)
class Template:
    """The template head.

    ``vertices`` (V, 3); ``faces`` (F, 3) int, outward oriented; ``labels`` (V,) part ids
    into :data:`PART_NAMES`; ``kind`` (V,) the component of each vertex (``SKIN`` ...
    ``TORSO``); ``grids`` the grid components; ``neighbours`` (V, 4) the vertices whose
    differences give a vertex's normal (left, right, up, down; -1 for the rigid parts,
    whose normals are the template's); ``eye_angle`` (V,) degrees from the gaze axis on
    the eyeballs; ``mouth_rings`` the skin rings of the lower lip edge, cavity floor,
    cavity roof and upper lip edge; ``directions`` (V, 3) unit rays of the grid vertices;
    ``hair_cover`` (V,) bool, the hair-shell vertices some style shows; ``tooth_shade`` (V,)
    1 on enamel, less in the gaps between teeth, 0 on the gums and elsewhere; ``landmarks``
    name -> vertex index (anthropometric points of Farkas' norms, left side where paired).
    """

    vertices: np.ndarray
    faces: np.ndarray
    labels: np.ndarray
    kind: np.ndarray
    grids: tuple[Grid, ...]
    neighbours: np.ndarray
    eye_angle: np.ndarray
    mouth_rings: tuple[int, int, int, int]
    directions: np.ndarray
    hair_cover: np.ndarray
    tooth_shade: np.ndarray
    landmarks: dict

    @property
    def skin(self) -> np.ndarray:
        """(V,) bool: the skin grid."""
        return self.kind == SKIN

    def grid(self, name: str) -> Grid:
        """The grid called ``name`` (one of :data:`GRIDS`, ``left_eye``, ``right_eye``)."""
        return next(g for g in self.grids if g.name == name)

    def ring(self, r: int, name: str = "skin") -> np.ndarray:
        """(segments,) vertex indices of ring ``r`` of grid ``name``."""
        g = self.grid(name)
        return g.start + r * g.segments + np.arange(g.segments)

    def mouth_ring_vertices(self) -> tuple[np.ndarray, ...]:
        """Vertex indices of the four mouth rings: lower lip edge, cavity floor, cavity roof,
        upper lip edge (see :func:`_skin`)."""
        return tuple(self.ring(r) for r in self.mouth_rings)

    @property
    def mouth_line(self) -> np.ndarray:
        """(V,) bool: the lip-edge vertices of the open mouth (inside the mouth corners)."""
        out = np.zeros(len(self.vertices), bool)
        for r in (self.mouth_rings[0], self.mouth_rings[3]):
            idx = self.ring(r)
            out[idx] = self.labels[idx] == PART["mouth"]
        return out


# --------------------------------------------------------------------------- SDF


def _ellipsoid(p: np.ndarray, c, r) -> np.ndarray:
    q = (p - np.asarray(c)) / np.asarray(r)
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / np.asarray(r), axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _sphere(p: np.ndarray, c, r: float) -> np.ndarray:
    return np.linalg.norm(p - np.asarray(c), axis=-1) - r


def _round_cone(p: np.ndarray, a, b, ra: float, rb: float) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    ba = b - a
    t = np.clip(((p - a) @ ba) / (ba @ ba), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ba), axis=-1) - (ra + (rb - ra) * t)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -_smin(-a, -b, k)


def mirror(p: np.ndarray) -> np.ndarray:
    """Fold x so that bilateral features are written once (for the +x side)."""
    q = np.array(p, dtype=float, copy=True)
    q[..., 0] = np.abs(q[..., 0])
    return q


def fissure_heights(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower lid margins (y) of the eye opening at |x| (almond: a rounded upper
    arc peaking medially of centre, a flatter lower arc, the outer corner a little higher)."""
    x0, x1, hu, hl = FISSURE
    s = np.clip((np.abs(x) - x0) / (x1 - x0), 0.0, 1.0)
    tilt = 0.018 * s  # the outer canthus sits higher than the inner one
    upper = EYE_CENTRE[1] + tilt + hu * np.sin(np.pi * s ** 0.85) ** 0.8
    lower = EYE_CENTRE[1] + tilt - hl * np.sin(np.pi * s ** 1.1) ** 0.9
    return upper, lower


def _fissure(p: np.ndarray) -> np.ndarray:
    """Approximate signed distance (in y and x) of points to the eye opening, negative inside."""
    m = mirror(p)
    upper, lower = fissure_heights(m[..., 0])
    x0, x1 = FISSURE[:2]
    return np.maximum(np.maximum(m[..., 1] - upper, lower - m[..., 1]), np.maximum(x0 - m[..., 0], m[..., 0] - x1))


def part_distances(p: np.ndarray) -> dict[str, np.ndarray]:
    """Signed distances (approximate) of points to the named anatomical parts."""
    m = mirror(p)
    nose = _smin(_round_cone(p, (0, 0.12, 0.85), (0, -0.25, 1.04), 0.06, 0.058),
                 _sphere(p, (0, -0.265, 1.04), 0.068), 0.05)
    nose = _smin(nose, _ellipsoid(m, (0.11, -0.33, 0.935), (0.065, 0.05, 0.055)), 0.07)  # alae
    nose = _smin(nose, _ellipsoid(p, (0, -0.32, 0.92), (0.13, 0.08, 0.1)), 0.08)
    lips = 0.006 - lip_height(p)  # negative on the red of the lips
    ear = _ellipsoid(m, (0.75, 0.0, -0.12), (0.1, 0.3, 0.17))
    brow = _ellipsoid(m, (0.31, 0.31, 0.78), (0.2, 0.055, 0.14))
    return {"nose": nose, "lips": lips, "ear": ear, "brow": brow}


def lip_height(p: np.ndarray) -> np.ndarray:
    """How far the lips stand out of the face (decimetres): an upper and a fuller lower lip, both
    tapering smoothly to nothing at the mouth corners, with a shallow crease where they meet."""
    x, y = p[..., 0], p[..., 1]
    taper = np.clip(1.0 - (x / (MOUTH_HALF_WIDTH + 0.02)) ** 2, 0.0, 1.0) ** 0.8 * (p[..., 2] > 0.6)
    upper = 0.03 * np.exp(-(((y - MOUTH_Y - 0.028) / 0.032) ** 2))
    upper = upper * (1.0 + 0.25 * np.exp(-((np.abs(x) - 0.06) / 0.04) ** 2))  # the cupid's bow
    lower = 0.032 * np.exp(-(((y - MOUTH_Y + 0.034) / 0.036) ** 2))
    crease = 0.006 * np.exp(-(((y - MOUTH_Y) / 0.008) ** 2))
    return taper * (upper + lower - crease)


def eye_aperture(p: np.ndarray) -> np.ndarray:
    """Signed distance (approximate, negative inside) to the region cut out in front of each
    eyeball: the almond opening of the lids, extruded forward from just in front of the
    eyeball's centre."""
    return np.maximum(_fissure(p), EYE_CENTRE[2] + 0.015 - p[..., 2])


def neck_coords(p: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """(..., 2) the points' x and z in units of the neck's half-widths (plus ``grow``) about its axis:
    norm 1 on the neck's (or a ``grow``-wider collar's) surface."""
    neck_x, neck_z, rx, rz = NECK
    return np.stack([(p[..., 0] - neck_x) / (rx + grow), (p[..., 2] - neck_z) / (rz + grow)], -1)


def head_sdf(p: np.ndarray, ears: bool = True) -> np.ndarray:
    """Approximate signed distance of points (..., 3) to the template skin (head and neck), with or without
    the ears."""
    m = mirror(p)
    parts = part_distances(p)
    d = _ellipsoid(p, (0, 0.25, -0.14), (0.74, 0.9, 0.97))  # cranium
    d = _smin(d, _ellipsoid(p, (0, -0.2, 0.16), (0.62, 0.82, 0.7)), 0.15)  # face
    d = _smin(d, _ellipsoid(p, (0, -0.62, 0.12), (0.42, 0.36, 0.56)), 0.16)  # jaw
    d = _smin(d, _ellipsoid(p, (0, -0.6, 0.52), (0.3, 0.3, 0.37)), 0.12)  # the dental arches under the lips
    d = _smin(d, _ellipsoid(p, (0, -0.845, 0.6), (0.21, 0.15, 0.28)), 0.1)  # chin
    _, _, rx, rz = NECK
    neck = (np.linalg.norm(neck_coords(p), axis=-1) - 1.0) * min(rx, rz)
    neck = _smax(neck, p[..., 1] + 0.55, 0.1)  # the neck below the jaw ...
    neck = _smax(neck, -(p[..., 1] + 2.1), 0.04)  # ... ends inside the torso
    d = _smin(d, neck, 0.18)
    d = _smin(d, _ellipsoid(m, (0.42, -0.1, 0.47), (0.24, 0.16, 0.22)), 0.16)  # cheekbones
    d = _smin(d, _ellipsoid(p, (0, 0.29, 0.66), (0.52, 0.1, 0.19)), 0.1)  # brow ridge
    # The lids wrap the front of the eyeball; the almond opening between them shows it.
    d = _smin(d, _sphere(m, EYE_CENTRE, EYE_RADIUS + 0.014), 0.05)
    d = _smax(d, -eye_aperture(p), 0.006)
    d = _smin(d, parts["nose"], 0.07)
    d = _smax(d, -_ellipsoid(m, (0.058, -0.38, 0.985), (0.03, 0.02, 0.045)), 0.012)  # nostrils
    d = d - lip_height(p)
    if not ears:
        return d
    ear = _smax(parts["ear"], -_ellipsoid(m, (0.84, 0.0, -0.1), (0.04, 0.14, 0.09)), 0.02)
    return _smin(d, ear, 0.05)


def torso_sdf(p: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the shoulders and shirt of the torso, with a crew collar
    round the base of the neck (lower in front)."""
    m = mirror(p)
    d = _ellipsoid(p, (0, -2.35, -0.2), (1.2, 0.75, 0.6))  # chest
    d = _smin(d, _ellipsoid(m, (1.05, -2.0, -0.25), (0.62, 0.3, 0.45)), 0.35)  # shoulders
    _, neck_z, rx, rz = NECK
    collar = (np.linalg.norm(neck_coords(p, 0.07), axis=-1) - 1.0) * min(rx, rz)
    top = -1.36 - 0.16 * np.clip((p[..., 2] - neck_z) / rz, 0.0, 1.0) ** 2
    collar = _smax(collar, p[..., 1] - top, 0.03)
    d = _smin(d, _smax(collar, -(p[..., 1] + 2.2), 0.02), 0.25)
    return _smax(d, -(p[..., 1] + 3.0), 0.05)


# ------------------------------------------------------------------------ grid


def _warped(n: int, lo: float, hi: float, peaks: list[tuple[float, float, float]]) -> np.ndarray:
    """n angles in (lo, hi) spaced by a density 1 + sum(a * exp(-((x - c) / w)^2))."""
    x = np.linspace(lo, hi, 4097)
    dens = np.ones_like(x)
    for c, w, a in peaks:
        dens += a * np.exp(-(((x - c) / w) ** 2))
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) * 0.5 * np.diff(x))])
    return np.interp((np.arange(n) + 0.5) / n * cdf[-1], cdf, x)


def radial_extract(directions: np.ndarray, sdf, centre=(0.0, 0.0, 0.0), t_max: float = 2.6) -> np.ndarray:
    """Distance from ``centre`` to the outermost crossing of ``sdf`` along each ray (sphere
    tracing inward, then bisection)."""
    c = np.asarray(centre, dtype=float)
    t = np.full(len(directions), t_max)
    for _ in range(500):
        d = sdf(c + directions * t[:, None])
        active = d > 1e-5
        if not active.any():
            break
        t = np.where(active, t - np.clip(0.6 * d, 2e-4, 0.05), t)
    lo, hi = np.maximum(t - 0.06, 0.02), t + 1e-4
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        inside = sdf(c + directions * mid[:, None]) <= 0
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    return 0.5 * (lo + hi)


def _grid_faces(rings: int, segments: int, first: int, south: int, north: int) -> np.ndarray:
    """Triangles of a ring-major grid closed by a fan at each pole."""
    idx = first + np.arange(rings * segments).reshape(rings, segments)
    a, b = idx[:-1], np.roll(idx[:-1], -1, axis=1)
    c, d = idx[1:], np.roll(idx[1:], -1, axis=1)
    quads = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    s0, s1 = idx[0], np.roll(idx[0], -1)
    n0, n1 = idx[-1], np.roll(idx[-1], -1)
    fan_s = np.stack([np.full(segments, south), s1, s0], -1)
    fan_n = np.stack([np.full(segments, north), n0, n1], -1)
    return np.concatenate([quads, fan_s, fan_n]).astype(np.int64)


def _grid_neighbours(rings: int, segments: int, first: int) -> np.ndarray:
    """(rings*segments + 2, 4) left, right, up, down neighbours of a grid's vertices (poles: -1)."""
    r, s = np.meshgrid(np.arange(rings), np.arange(segments), indexing="ij")
    at = lambda rr, ss: first + rr * segments + ss % segments  # noqa: E731
    south, north = first + rings * segments, first + rings * segments + 1
    up = np.where(r + 1 < rings, at(np.minimum(r + 1, rings - 1), s), north)
    down = np.where(r > 0, at(np.maximum(r - 1, 0), s), south)
    nb = np.stack([at(r, s - 1), at(r, s + 1), up, down], -1).reshape(-1, 4)
    return np.concatenate([nb, np.full((2, 4), -1)]).astype(np.int64)


def orientation_ok(vertices: np.ndarray, faces: np.ndarray, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """True per face whose signed volume about ``centre`` is positive.

    A closed sphere-topology mesh whose faces all pass is star-shaped about the
    centre, hence free of self-intersections.
    """
    v = vertices[..., faces, :] - np.asarray(centre)
    return np.einsum("...i,...i->...", v[..., 0, :], np.cross(v[..., 1, :], v[..., 2, :])) > 0


def face_labels(vertex_labels: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Part label of each face: the label most of its vertices share (ties: the larger id, a rarer part)."""
    lab = vertex_labels[faces]
    fl = np.where(lab[:, 1] == lab[:, 2], lab[:, 1], lab.max(1))
    fl = np.where(lab[:, 0] == lab[:, 1], lab[:, 0], fl)
    fl = np.where(lab[:, 0] == lab[:, 2], lab[:, 0], fl)
    return fl.astype(np.uint8)


def _lat_long(rings: int, segments: int, ring_peaks, segment_peaks, lo: float = -np.pi / 2,
              hi: float = np.pi / 2) -> tuple[np.ndarray, np.ndarray]:
    theta = _warped(rings, lo, hi, ring_peaks)
    phi = _warped(segments, -np.pi, np.pi, segment_peaks)
    # Mirror-symmetric longitudes: segment s and segments-1-s are mirror images.
    phi = 0.5 * (phi - phi[::-1])
    return theta, phi


def _directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.cos(th) * np.sin(ph), np.sin(th), np.cos(th) * np.cos(ph)], -1).reshape(-1, 3)
    return np.concatenate([dirs, [[0, -1.0, 0], [0, 1.0, 0]]])


# ------------------------------------------------------------------------ skin


def _skin_labels(p: np.ndarray, parts: dict[str, np.ndarray]) -> np.ndarray:
    x, z = p[:, 0], p[:, 2]
    lab = np.full(len(p), PART["skin"], dtype=np.uint8)
    lab[(scalp_density(p) > 0.5) & (parts["ear"] > 0.03)] = PART["hair"]
    lab[(parts["ear"] < 0.03) & (np.abs(x) > 0.58)] = PART["ears"]
    lab[parts["nose"] < 0.012] = PART["nose"]
    lab[(parts["lips"] < 0.0) & (z > 0.7)] = PART["mouth"]
    brow = (brow_density(p) > 0.35) & (z > 0.55)
    lab[brow & (x > 0)] = PART["left_brow"]
    lab[brow & (x < 0)] = PART["right_brow"]
    return lab


def smooth(s: np.ndarray) -> np.ndarray:
    """Hermite smoothstep 3 s^2 - 2 s^3 of ``s`` in [0, 1]: flat at both ends."""
    return s * s * (3 - 2 * s)


def brow_density(p: np.ndarray, spread: float = 1.0) -> np.ndarray:
    """Hair density (0..1) of the eyebrows: thick medially, arched, tapering laterally
    (``spread`` > 1: a wider, fuller brow)."""
    m = mirror(p)
    s = np.clip((m[..., 0] - 0.1) / 0.38, -0.2, 1.2)  # 0 at the medial head, 1 at the tail
    centre = 0.268 + 0.05 * np.sin(np.pi * np.clip(s, 0, 1) ** 0.8) - 0.012 * s
    half = 0.04 * spread * (1.0 - 0.6 * np.clip(s, 0, 1))  # about 8 mm tall at the head, 3 mm at the tail
    across = np.abs(m[..., 1] - centre) / half
    along = np.clip(1.0 - np.abs(s - 0.5) / 0.62, 0, 1) ** 0.3
    soft = np.clip((1.3 - across) / 0.8, 0, 1)  # an edge as soft as the 3 mm vertex spacing allows
    return smooth(soft) * along * (m[..., 2] > 0.5)


def _mouth_latitudes(theta_mouth: float, phi: np.ndarray) -> np.ndarray:
    """Latitude of the lips' meeting line along each longitude: the rays that meet the skin at
    the height ``MOUTH_Y`` across the front of the face, out to 30 degrees (a latitude circle would
    curve up towards the mouth corners), fading back to the latitude circle by 70 degrees."""
    lat = np.full(len(phi), theta_mouth)
    # Fully level across the front of the face, well past the mouth's corners (about 18 degrees); only
    # beyond 30 degrees does the line fade back to the latitude circle (a fade that began at the midline
    # left the corners 3.6 mm above the middle: a neutral face with a built-in smile).
    front = smooth(np.clip((np.deg2rad(70) - np.abs(phi)) / np.deg2rad(40), 0.0, 1.0))
    for _ in range(3):
        d = np.stack([np.cos(lat) * np.sin(phi), np.sin(lat), np.cos(lat) * np.cos(phi)], -1)
        horizontal = radial_extract(d, head_sdf) * np.cos(lat)
        lat = theta_mouth + front * (np.arctan2(MOUTH_Y, horizontal) - theta_mouth)
    return lat


def _skin(rings: int, segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Skin grid vertices, rays and labels with the four mouth rings (lower lip edge, floor, roof, upper lip edge)."""
    theta, phi = _lat_long(rings, segments, [(np.deg2rad(-15), np.deg2rad(32), 2.0)],
                           [(0.0, np.deg2rad(55), 1.6)])
    theta_mouth = np.arctan2(MOUTH_Y, 0.93)
    m = int(np.argmin(np.abs(theta - theta_mouth)))
    theta[m] = theta_mouth
    theta = np.concatenate([theta[:m], np.full(4, theta_mouth), theta[m + 1:]])
    rings = len(theta)
    # Rings near the mouth bend with the lips' meeting line (fading over a few degrees).
    shift = _mouth_latitudes(theta_mouth, phi) - theta_mouth
    fade = np.exp(-(((theta - theta_mouth) / np.deg2rad(9.0)) ** 2))
    th = theta[:, None] + fade[:, None] * shift[None, :]
    dirs = np.stack([np.cos(th) * np.sin(phi), np.sin(th), np.cos(th) * np.cos(phi)], -1).reshape(-1, 3)
    dirs = np.concatenate([dirs, [[0, -1.0, 0], [0, 1.0, 0]]])
    r = radial_extract(dirs, head_sdf)
    v = dirs * r[:, None]
    labels = _skin_labels(v, part_distances(v))
    mouth = (m, m + 1, m + 2, m + 3)
    grid = v[: rings * segments].reshape(rings, segments, 3)
    lab = labels[: rings * segments].reshape(rings, segments)
    x = grid[m, :, 0]
    inside = np.clip(1.0 - (x / MOUTH_HALF_WIDTH) ** 2, 0.0, 1.0) * (grid[m, :, 2] > 0.5)
    depth = MOUTH_DEPTH * inside
    for ring in mouth[1:3]:  # the cavity's floor and roof, set back into the head
        grid[ring, :, 2] -= depth
        lab[ring] = np.where(inside > 0, PART["mouth_interior"], lab[ring])
    for ring in (mouth[0], mouth[3]):
        lab[ring] = np.where(inside > 0, PART["mouth"], lab[ring])
    v[: rings * segments] = grid.reshape(-1, 3)
    labels[: rings * segments] = lab.reshape(-1)
    return v, dirs, labels, mouth


# ------------------------------------------------------------------------ hair


def hairline(p: np.ndarray, recess: bool = True) -> np.ndarray:
    """Height (y) of the hairline above each point's place on the scalp (forehead, temples and nape), with the
    temples' recess unless ``recess`` is False."""
    line = np.interp(p[..., 2], [-1.0, -0.55, -0.2, 0.2, 0.45, 0.62], [-0.62, -0.42, -0.08, 0.42, 0.62, 0.7])
    if recess:
        line = line + 0.06 * np.exp(-((np.abs(p[..., 0]) - 0.36) / 0.1) ** 2) * (p[..., 2] > 0.3)
    return line


def _ears_bare(p: np.ndarray) -> np.ndarray:
    """1 on and around the ears, where no hair grows, fading to 0 over 3 mm."""
    return np.clip(-_ellipsoid(mirror(p), (0.75, 0.0, -0.12), (0.13, 0.33, 0.2)) / 0.03, 0.0, 1.0)


def _sides(p: np.ndarray) -> np.ndarray:
    """1 at the sides and back of the head (behind the temples), 0 in front: where women's hair reaches lower."""
    return np.clip((0.4 - p[..., 2]) / 0.25, 0.0, 1.0)


def scalp_density(p: np.ndarray) -> np.ndarray:
    """Hair density (0..1) painted on the scalp: full down to 3 mm below the hairline, then thinning out over
    7 mm; at the temples and nape, where women's hair reaches lower, 5 mm further down. The hair shell meets
    the skin on the full band (its edge, jagged where two meshes of 3-5 mm cells cross, lies on hair), so the
    hairline seen is this gradient. It fades to nothing round the ears by itself."""
    above = p[..., 1] - (hairline(p) - 0.05 * _sides(p))
    return smooth(np.clip((above + 0.1) / 0.07, 0.0, 1.0)) * (1.0 - _ears_bare(p))


def _women_reach(above: np.ndarray) -> np.ndarray:
    """0..1: how fully women's hair reaches down to points ``above`` the un-recessed hairline (1 from the
    hairline up, 0 from 9 mm below)."""
    return np.clip(1.0 + above / 0.09, 0.0, 1.0)


def hair_style_radii(dirs: np.ndarray, skin_r: np.ndarray) -> dict[str, np.ndarray]:
    """Radius of the hair shell along each ray for every style; where a style has no hair the
    shell dips under the skin, crossing it smoothly (a clean hairline).

    ``short``: a cropped cap on the scalp above a hairline at the forehead, temples and
    nape, fuller at the crown; ``long``: fuller still, and falling over the ears and behind the
    neck to the shoulders, the curtain and the cap joined without a crease.
    """
    p = dirs * skin_r[:, None]
    y, z = p[:, 1], p[:, 2]
    above = y - hairline(p)
    grow = np.clip(above / 0.2 + 0.5, 0.0, 1.0) * (1.0 - _ears_bare(p))  # 0 under the skin .. 1 full hair
    grow = smooth(grow)
    crown = np.clip(y + 0.2, 0.0, 1.2)
    # Where no style grows hair over the ears (not even women's, reaching their upper half), the shell sinks
    # 1.5 cm deeper: a ray grid's stretched cells at the ears' walls would otherwise cross the skin's.
    reach = _women_reach(y - hairline(p, recess=False))
    base = skin_r - 0.02 - 0.15 * _ears_bare(p) * (1.0 - reach) ** 2
    short = base + grow * (0.024 + 0.03 * crown + 0.012 * np.clip(z, 0, 1))
    fuller = base + grow * (0.03 + 0.06 * crown + 0.02 * np.clip(z, 0, 1))
    # Long: a curtain (an elliptic cylinder round the head) from the temples to the shoulders,
    # open in front of the face.
    d = dirs
    head_r = radial_extract(d, lambda q: head_sdf(q, ears=False))  # the curtain hangs smoothly over the ears
    a, b, zc = 0.9, 1.0, -0.12  # clear of the ears (out to x = 0.86)
    qa = (d[:, 0] / a) ** 2 + (d[:, 2] / b) ** 2
    qb = -2 * d[:, 2] * zc / b**2
    qc = (zc / b) ** 2 - 1.0
    t_curtain = (-qb + np.sqrt(np.maximum(qb**2 - 4 * qa * qc, 0.0))) / (2 * np.maximum(qa, 1e-9))
    pc = d * t_curtain[:, None]
    azimuth = np.degrees(np.arctan2(np.abs(pc[:, 0]), pc[:, 2] - zc))
    front = 58.0 + 45.0 * np.clip((0.1 - pc[:, 1]) / 0.9, 0, 1)  # mid-edge; the face stays open, wider below the jaw
    bottom = -1.45 + 0.06 * np.cos(azimuth / 7.0)
    # (the ends taper in over 2 cm: a rounded outline, not a step of the grid's rings)
    side = np.clip((azimuth - front + 7.0) / 28.0, 0.0, 1.0) * np.clip((pc[:, 1] - bottom) / 0.2, 0.0, 1.0)
    side = side * np.clip((0.6 - pc[:, 1]) / 0.5, 0.0, 1.0) * (t_curtain > head_r)  # widening down to the ears
    side = smooth(side)
    curtain = head_r - 0.02 + side * (t_curtain - head_r + 0.02)
    # Joined without a crease (where neither has hair, the join lies 1 mm under the skin, not 2)
    return {"short": short, "long": _smax(curtain, fuller, 0.04)}


def hair_sex_difference(dirs: np.ndarray, skin_r: np.ndarray) -> np.ndarray:
    """Women's minus men's short hair along each ray at gender_strength 1: fuller, reaching further down the
    temples, over the ears and down the nape, where men's is cropped higher. Zero in front of the face. Long
    hair has none (the model's ``short_hair_sex`` row): a man's smaller cap cut a ledge round the curtain."""
    p = dirs * skin_r[:, None]
    above = p[:, 1] - hairline(p, recess=False)
    extend = _women_reach(above)
    return _sides(p) * 0.1 * extend * extend + 0.02 * np.clip(above / 0.05, 0.0, 1.0)


@lru_cache(maxsize=4)
def hair_shell(rings: int, segments: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The hair-shell grid's rays (its vertices' order), every style's radii along them, the short hair's sex
    difference (:func:`hair_sex_difference`) and the cover mask (the rays some style or sex shows). Cached:
    the template and the model's hair rows read the same arrays (read-only)."""
    theta, phi = _lat_long(rings, segments, [(np.deg2rad(-20), np.deg2rad(40), 1.0)], [])
    dirs = _directions(theta, phi)
    skin_r = radial_extract(dirs, head_sdf)
    radii = hair_style_radii(dirs, skin_r)
    diff = hair_sex_difference(dirs, skin_r)
    cover = (radii["short"] + 0.5 * diff > skin_r) | (radii["long"] > skin_r)
    for a in (dirs, diff, cover, *radii.values()):
        a.setflags(write=False)
    return dirs, radii, diff, cover


# ------------------------------------------------------------------------ rigid parts


def _eyeball(side: int, segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, faces and gaze angles of one eyeball (pole on the gaze axis +z)."""
    alphas = np.array([4.0, 8.0, PUPIL_DEG, 16.0, 20.0, 24.0, IRIS_DEG, 33.0, 40.0, 50.0,
                       62.0, 78.0, 95.0, 115.0, 140.0, 162.0])
    beta = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    a = np.deg2rad(alphas)[:, None]
    ring = np.stack([np.sin(a) * np.cos(beta), np.sin(a) * np.sin(beta), np.cos(a) * np.ones_like(beta)], -1)
    pts = np.concatenate([ring.reshape(-1, 3), [[0, 0, 1.0], [0, 0, -1.0]]])  # a grid: rings, then the poles
    ang = np.concatenate([np.repeat(alphas, segments), [0.0, 180.0]])
    # The cornea bulges in front of the iris.
    edge = np.cos(np.deg2rad(IRIS_DEG + 4))
    pts = pts * (1.0 + 0.06 * np.clip(np.cos(np.deg2rad(ang)) - edge, 0, None) / (1 - edge))[:, None]
    faces = _grid_faces(len(alphas), segments, first=0, south=len(pts) - 2, north=len(pts) - 1)
    centre = EYE_CENTRE * np.array([side, 1, 1])
    return centre + EYE_RADIUS * pts, faces, ang


def _teeth(upper: bool, segments: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One dental arch: a curved slab of teeth (labial face, biting edge, lingual face) with gum
    along its root. Returns vertices, faces and a per-vertex shade (1 = enamel, less in the
    gaps between teeth, 0 = gum)."""
    s = np.linspace(-1.0, 1.0, segments)
    half_width = 0.2 if upper else 0.17
    x = half_width * np.sin(s * 1.2) / np.sin(1.2)
    sign = 1.0 if upper else -1.0
    z_front = 0.8 - 0.13 * (x / half_width) ** 2 - (0.0 if upper else 0.03)
    # Upper incisors reach a little below the lips' meeting line, the lower ones just behind them.
    edge = MOUTH_Y + (-0.018 if upper else -0.01) + sign * 0.012 * (np.abs(s) > 0.45)
    gum = edge + sign * 0.115
    enamel = edge + sign * 0.09
    thick = 0.05
    gaps = 1.0 - 0.35 * (np.abs(np.cos(s * np.pi * 4.5)) > 0.92)
    # Cross-section loop: gum front, enamel top front, edge front, edge back, gum back.
    loop = [(gum, 0.0, 0.0), (enamel, 0.0, 1.0), (edge, 0.0, 1.0), (edge, -thick, 1.0), (gum, -thick, 0.0)]
    v = np.stack([np.stack([x * (1 - 0.15 * (dz < 0)), yy, z_front + dz], -1) for yy, dz, _ in loop], 1)
    shade = np.stack([gaps * e for _, _, e in loop], 1)
    n_loop = v.shape[1]
    idx = np.arange(segments * n_loop).reshape(segments, n_loop)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    if not upper:  # the lower arch's loop runs upwards: turn its faces to face outward
        faces = faces[:, [0, 2, 1]]
    return v.reshape(-1, 3), faces.astype(np.int64), shade.reshape(-1)


# ------------------------------------------------------------------------ template


def _landmarks(v: np.ndarray, kind: np.ndarray, labels: np.ndarray, lips_meet: np.ndarray) -> dict[str, int]:
    """Vertex indices of Farkas' anthropometric points on the template (left side where paired)."""
    skin = kind == SKIN
    idx = np.flatnonzero(skin)
    p = v[idx]

    def nearest(target, mask=None) -> int:
        q = np.flatnonzero(mask[idx]) if mask is not None else np.arange(len(idx))
        return int(idx[q[np.argmin(np.linalg.norm(p[q] - np.asarray(target), axis=1))]])

    front = (p[:, 2] > 0.2)
    # The eye's corners: the points of the lids' rim (on the face, not inside the opening) nearest the opening's
    # inner and outer corner.
    rim = (np.abs(_fissure(p)) < 0.02) & (p[:, 2] > EYE_CENTRE[2] + 0.05) & (p[:, 0] > 0)
    corners = [np.array([x, fissure_heights(np.array(x))[0]]) for x in FISSURE[:2]]  # where the lids meet
    gap = [np.where(rim, np.linalg.norm(p[:, :2] - c, axis=1), 9) for c in corners]
    out = {
        "en": int(idx[np.argmin(gap[0])]),
        "ex": int(idx[np.argmin(gap[1])]),
        "n": nearest([0.0, 0.13, 0.9]),
        "sn": nearest([0.0, -0.385, 0.95]),
        "prn": int(idx[np.argmax(np.where(np.abs(p[:, 0]) < 0.02, p[:, 2], -9))]),
        "gn": nearest([0.0, -0.985, 0.62]),
    }
    corner = lips_meet[idx] & (p[:, 0] > 0) & (p[:, 0] < MOUTH_HALF_WIDTH) & (p[:, 2] > 0.6)
    out["ch"] = int(idx[np.argmax(np.where(corner, p[:, 0], -9))])
    nose = (labels[idx] == PART["nose"]) & (np.abs(p[:, 1] + 0.36) < 0.04)
    out["al"] = int(idx[np.argmax(np.where(nose & (p[:, 0] > 0), p[:, 0], -9))])
    band = front & (np.abs(p[:, 1] - 0.0) < 0.03) & (p[:, 2] > 0.05) & (p[:, 2] < 0.45) & (labels[idx] == PART["skin"])
    out["zy"] = int(idx[np.argmax(np.where(band & (p[:, 0] > 0), p[:, 0], -9))])
    jaw = (np.abs(p[:, 1] + 0.8) < 0.04) & (p[:, 2] > -0.1) & (p[:, 2] < 0.25)
    out["go"] = int(idx[np.argmax(np.where(jaw & (p[:, 0] > 0), p[:, 0], -9))])
    return out


@lru_cache(maxsize=4)
def build_template(rings: int = 100, segments: int = 128, eye_segments: int = 24) -> Template:
    """Build the template head (cached per resolution): ``rings`` latitude rings of the skin
    (plus three on the mouth line) and ``segments`` longitudes; the hair shell has as many (its
    outline and edges are drawn in 3-5 mm steps at full detail; coarse levels keep every other of the
    rings and segments they keep of the skin, see :func:`grid_subset`), the torso a quarter."""
    verts, faces, labels, kinds, dirs, angles, nbs, grids, shades = [], [], [], [], [], [], [], [], []
    offset = 0

    def add(v, f, lab, kind, d=None, ang=None, nb=None, shade=None):
        nonlocal offset
        verts.append(v)
        shades.append(shade if shade is not None else np.zeros(len(v)))
        faces.append(f + offset)
        labels.append(np.asarray(lab, np.uint8) * np.ones(len(v), np.uint8))
        kinds.append(np.full(len(v), kind, np.int8))
        dirs.append(d if d is not None else np.zeros((len(v), 3)))
        angles.append(ang if ang is not None else np.zeros(len(v)))
        nbs.append(nb + offset * (nb >= 0) if nb is not None else np.full((len(v), 4), -1))
        offset += len(v)

    skin_v, skin_d, skin_lab, mouth = _skin(rings, segments)
    n_rings = rings + 3
    f = _grid_faces(n_rings, segments, 0, n_rings * segments, n_rings * segments + 1)
    if orientation_ok(skin_v, f).mean() < 0.5:
        f = f[:, [0, 2, 1]]
    grids.append(Grid("skin", offset, n_rings, segments, (0.0, 0.0, 0.0)))
    add(skin_v, f, skin_lab, SKIN, skin_d, nb=_mouth_neighbours(_grid_neighbours(n_rings, segments, 0), mouth,
                                                                   segments))
    for kind, side in ((LEFT_EYE, 1), (RIGHT_EYE, -1)):
        ev, ef, ea = _eyeball(side, eye_segments)
        if orientation_ok(ev, ef, ev.mean(0)).mean() < 0.5:
            ef = ef[:, [0, 2, 1]]
        grids.append(Grid("left_eye" if side > 0 else "right_eye", offset, (len(ev) - 2) // eye_segments,
                          eye_segments, tuple(EYE_CENTRE * [side, 1, 1]), rigid=True))
        add(ev, ef, PART["left_eye"] if side > 0 else PART["right_eye"], kind, (ev - ev.mean(0)) / EYE_RADIUS, ea)
    for kind, upper in ((UPPER_TEETH, True), (LOWER_TEETH, False)):
        tv, tf, ts = _teeth(upper)
        add(tv, tf, PART["mouth_interior"], kind, shade=ts)
    hd, radii, _, cover = hair_shell(rings, segments)
    hv = hd * radii["short"][:, None]
    hf = _grid_faces(rings, segments, 0, rings * segments, rings * segments + 1)
    if orientation_ok(hv, hf).mean() < 0.5:
        hf = hf[:, [0, 2, 1]]
    hair_start = offset
    grids.append(Grid("hair", offset, rings, segments, (0.0, 0.0, 0.0)))
    add(hv, hf[cover[hf].any(1)], PART["hair"], HAIR, hd, nb=_grid_neighbours(rings, segments, 0))
    t_rings, t_segs = max(8, rings // 4), max(8, segments // 4)
    theta, phi = _lat_long(t_rings, t_segs, [(np.deg2rad(60), np.deg2rad(30), 1.5)], [])
    td = _directions(theta, phi)
    tv = TORSO_CENTRE + td * radial_extract(td, torso_sdf, TORSO_CENTRE, t_max=3.0)[:, None]
    tf = _grid_faces(t_rings, t_segs, 0, t_rings * t_segs, t_rings * t_segs + 1)
    if orientation_ok(tv, tf, TORSO_CENTRE).mean() < 0.5:
        tf = tf[:, [0, 2, 1]]
    grids.append(Grid("torso", offset, t_rings, t_segs, tuple(TORSO_CENTRE)))
    add(tv, tf, PART["clothing"], TORSO, td, nb=_grid_neighbours(t_rings, t_segs, 0))

    vertices = np.concatenate(verts)
    kind = np.concatenate(kinds)
    lab = np.concatenate(labels)
    hair_cover = np.zeros(len(vertices), bool)
    hair_cover[hair_start:hair_start + len(hv)] = cover
    return Template(
        vertices=vertices.astype(np.float64),
        faces=np.concatenate(faces),
        labels=lab,
        kind=kind,
        grids=tuple(grids),
        neighbours=np.concatenate(nbs),
        eye_angle=np.concatenate(angles),
        mouth_rings=mouth,
        directions=np.concatenate(dirs),
        hair_cover=hair_cover,
        tooth_shade=np.concatenate(shades),
        landmarks=_landmarks(vertices, kind, lab, np.isin(np.arange(len(vertices)),
                                                          mouth[3] * segments + np.arange(segments))),
    )


def _mouth_neighbours(nb: np.ndarray, mouth: tuple[int, int, int, int], segments: int) -> np.ndarray:
    """Normals of the lip edges from the lip side only, of the cavity from its back wall."""
    nb = nb.copy()
    lower, floor, roof, upper = (r * segments + np.arange(segments) for r in mouth)
    nb[upper, 3] = upper  # up: the ring above; down: itself
    nb[lower, 2] = lower
    for ring in (floor, roof):
        nb[ring, 2], nb[ring, 3] = roof, floor
    return nb


def hidden_faces(t: Template) -> np.ndarray:
    """(F,) True for faces no pose can show: the neck inside the shirt's collar and the back of
    each eyeball inside the skull. The renderer leaves them out."""
    v = t.vertices[t.faces]
    kind = t.kind[t.faces]
    neck = np.all(kind == SKIN, 1) & np.all(v[..., 1] < -1.62, 1)
    eye_back = np.all(np.isin(kind, (LEFT_EYE, RIGHT_EYE)), 1) & np.all(t.eye_angle[t.faces] > 90.0, 1)
    return neck | eye_back


def face_spacing(t: Template) -> float:
    """Median edge length (decimetres) of the skin triangles of the inner face (brows, nose,
    mouth): the vertex spacing at which the face's albedo is sampled."""
    inner = [PART[n] for n in ("left_brow", "right_brow", "nose", "mouth")]
    f = t.faces[np.all(t.kind[t.faces] == SKIN, 1)]
    f = f[np.all(np.isin(t.labels[f], inner), 1)]
    return float(np.median(np.linalg.norm(t.vertices[f] - t.vertices[np.roll(f, 1, 1)], axis=2)))


def _mirrored_segments(segments: int, stride: int) -> list[int]:
    """Every ``stride``-th segment counted out from the midline, with its mirror image
    (segment s mirrors ``segments - 1 - s``; an odd count keeps its middle segment)."""
    mid = (segments + 1) // 2
    left = {s for s in range(mid) if (mid - 1 - s) % stride == 0}
    return sorted(left | {segments - 1 - s for s in left})


def grid_subset(t: Template, stride: int) -> tuple[np.ndarray, Template]:
    """A coarser template keeping every ``stride``-th ring and segment of each grid (of the hair shell, which
    is as fine as the skin, every ``2 * stride``-th: finer than the pixels of the images a coarse level is for).

    The skin keeps its four mouth rings, the eyeballs all their rings and segments (pupil
    and iris edges; an eye's grid is tilted, so a subset of it would not mirror the other
    eye), the kept segments of the other grids are mirror-symmetric about the face's midline, and the
    teeth are kept whole, so a coarsened face keeps its mouth, its bilateral symmetry and
    its identity. Returns ``(index, template)``: ``index`` (V',) selects the kept vertices
    of ``t``.
    """
    if stride == 1:
        return np.arange(len(t.vertices)), t
    index, faces, nbs, grids = [], [], [], []
    new_offset = 0
    mouth = t.mouth_rings
    for g in t.grids:
        step = 2 * stride if g.name == "hair" else stride  # the hair grid is twice as fine as a coarse level needs
        if g.name == "skin":
            m = t.mouth_rings
            keep_r = sorted(set(r for r in range(m[0] + 1) if (m[0] - r) % stride == 0) | set(m)
                            | set(r for r in range(m[3], g.rings) if (r - m[3]) % stride == 0))
            mouth = tuple(keep_r.index(r) for r in m)
        elif g.rigid:
            keep_r = list(range(g.rings))
        else:
            keep_r = list(range(0, g.rings, step))
        keep_s = list(range(g.segments)) if g.rigid else _mirrored_segments(g.segments, step)
        sel = (g.start + np.asarray(keep_r)[:, None] * g.segments + np.asarray(keep_s)[None, :]).reshape(-1)
        sel = np.concatenate([sel, [g.start + g.rings * g.segments, g.start + g.rings * g.segments + 1]])
        nr, ns = len(keep_r), len(keep_s)
        f = _grid_faces(nr, ns, new_offset, new_offset + nr * ns, new_offset + nr * ns + 1)
        if orientation_ok(t.vertices[sel], f - new_offset, g.centre).mean() < 0.5:
            f = f[:, [0, 2, 1]]
        if g.name == "hair":
            f = f[t.hair_cover[sel][f - new_offset].any(1)]
        if g.rigid:
            nb = np.full((len(sel), 4), -1)
        else:
            nb = _grid_neighbours(nr, ns, 0)
            if g.name == "skin":
                nb = _mouth_neighbours(nb, mouth, ns)
            nb = nb + new_offset * (nb >= 0)
        index.append(sel)
        faces.append(f)
        nbs.append(nb)
        grids.append(Grid(g.name, new_offset, nr, ns, g.centre, g.rigid))
        new_offset += len(sel)
    teeth = np.flatnonzero(np.isin(t.kind, (UPPER_TEETH, LOWER_TEETH)))
    remap = np.full(len(t.vertices), -1)
    remap[teeth] = new_offset + np.arange(len(teeth))
    faces.append(remap[t.faces[np.all(np.isin(t.faces, teeth), 1)]])
    nbs.append(np.full((len(teeth), 4), -1))
    index.append(teeth)
    index_a = np.concatenate(index)
    all_faces = np.concatenate(faces)
    # Faces in the full template's order of components (skin, eyes, teeth, hair, torso).
    order = np.argsort(t.kind[index_a][all_faces[:, 0]], kind="stable")
    old_to_new = np.full(len(t.vertices), -1)
    old_to_new[index_a] = np.arange(len(index_a))
    sub = Template(
        vertices=t.vertices[index_a], faces=all_faces[order], labels=t.labels[index_a], kind=t.kind[index_a],
        grids=tuple(grids), neighbours=np.concatenate(nbs), eye_angle=t.eye_angle[index_a], mouth_rings=mouth,
        directions=t.directions[index_a], hair_cover=t.hair_cover[index_a], tooth_shade=t.tooth_shade[index_a],
        landmarks={k: int(old_to_new[v]) for k, v in t.landmarks.items() if old_to_new[v] >= 0},
    )
    return index_a, sub


def _segments_cross_triangles(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray,
                              eps: float = 1e-12) -> np.ndarray:
    """True where segment p-q passes through the interior of triangle a-b-c (all (N, 3); Moller-Trumbore)."""
    d = q - p
    e1, e2 = b - a, c - a
    h = np.cross(d, e2)
    det = np.einsum("ni,ni->n", e1, h)
    ok = np.abs(det) > eps  # a segment parallel to the triangle's plane is not counted
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = p - a
    u = inv * np.einsum("ni,ni->n", s, h)
    qv = np.cross(s, e1)
    v = inv * np.einsum("ni,ni->n", d, qv)
    t = inv * np.einsum("ni,ni->n", e2, qv)
    return ok & (u > 0) & (v > 0) & (u + v < 1) & (t > 0) & (t < 1)


def self_intersections(vertices: np.ndarray, faces: np.ndarray, cell: float | None = None) -> np.ndarray:
    """Pairs (K, 2) of faces that cut through each other, among faces that share no vertex.

    Broad phase: faces whose bounding boxes share a cell of a uniform grid (``cell``,
    default twice the mean edge length); narrow phase: an edge of one face crossing the
    other face. Faces sharing a vertex or edge (neighbours on a mesh) are not tested.
    """
    tri = vertices[faces]  # (F, 3, 3)
    if cell is None:
        cell = 2.0 * float(np.linalg.norm(tri[:, 1] - tri[:, 0], axis=1).mean())
    lo = np.floor(tri.min(1) / cell).astype(np.int64)
    hi = np.floor(tri.max(1) / cell).astype(np.int64)
    span = hi - lo + 1
    counts = span.prod(1)
    owner = np.repeat(np.arange(len(faces)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    sx, sy = span[owner, 0], span[owner, 1]
    cells = lo[owner] + np.stack([offset % sx, (offset // sx) % sy, offset // (sx * sy)], 1)
    key = (cells[:, 0] * 73856093) ^ (cells[:, 1] * 19349663) ^ (cells[:, 2] * 83492791)
    order = np.lexsort((owner, key))
    key, owner = key[order], owner[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, len(key)])
    pairs = []
    for size in np.unique(sizes[sizes > 1]):
        groups = starts[sizes == size][:, None] + np.arange(size)
        i, j = np.triu_indices(size, 1)
        pairs.append(np.stack([owner[groups[:, i]].ravel(), owner[groups[:, j]].ravel()], 1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    pairs = np.unique(np.sort(np.concatenate(pairs), 1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    shared = (faces[pairs[:, 0], :, None] == faces[pairs[:, 1], None, :]).any((1, 2))
    pairs = pairs[~shared]
    t1, t2 = tri[pairs[:, 0]], tri[pairs[:, 1]]
    hit = np.zeros(len(pairs), bool)
    for (x, y) in ((t1, t2), (t2, t1)):
        for k in range(3):
            hit |= _segments_cross_triangles(x[:, k], x[:, (k + 1) % 3], y[:, 0], y[:, 1], y[:, 2])
    return pairs[hit]
