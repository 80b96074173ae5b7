"""A procedural template head: a closed, star-shaped skin mesh plus two eyeballs.

The skin is an implicit surface (smooth unions of anatomical primitives: cranium,
face, jaw, chin, cheekbones, brow ridge, eye sockets with eyelids, nose with bridge,
tip, alae and nostrils, lips with a mouth line, ears, neck) sampled along rays from
the head centre on a latitude-longitude grid. The grid has sphere topology, so the
skin is closed by construction, and because every vertex lies on its own ray the
surface cannot intersect itself as long as every triangle keeps its orientation
around the centre (see :func:`orientation_ok`).
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
)
PART = {name: i for i, name in enumerate(PART_NAMES)}

# Anatomical landmarks of the template (units: ~10 cm; x = subject's left, y = up,
# z = out of the face). "Left" is the subject's left, which a frontal camera shows
# on the right of the image.
EYE_CENTRE = np.array([0.3, 0.1, 0.655])
EYE_RADIUS = 0.13
MOUTH_Y = -0.585
MOUTH_HALF_WIDTH = 0.19
PUPIL_DEG = 11.0
IRIS_DEG = 24.0


@dataclass(frozen=True)
class Template:
    """The template head.

    ``vertices`` (V, 3); ``faces`` (F, 3) int, outward oriented; ``labels`` (V,) part
    ids into :data:`PART_NAMES`; ``skin`` (V,) bool, True for skin vertices (the
    rest are eyeball vertices); ``eye`` (V,) int, 0 for skin, 1 left eyeball,
    2 right eyeball; ``eye_angle`` (V,) degrees from the gaze axis for eyeball
    vertices; ``grid_shape`` (rings, segments) of the skin grid (skin vertices
    ``[:rings*segments]`` in ring-major order, then the two poles); ``mouth_line``
    (V,) bool, the vertices of the closed mouth line.
    """

    vertices: np.ndarray
    faces: np.ndarray
    labels: np.ndarray
    skin: np.ndarray
    eye: np.ndarray
    eye_angle: np.ndarray
    grid_shape: tuple[int, int]
    mouth_line: np.ndarray
    directions: np.ndarray


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


def _capsule_y(p: np.ndarray, x: float, z: float, y0: float, y1: float, r: float) -> np.ndarray:
    y = np.clip(p[..., 1], y0, y1)
    return np.sqrt((p[..., 0] - x) ** 2 + (p[..., 1] - y) ** 2 + (p[..., 2] - z) ** 2) - r


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -_smin(-a, -b, k)


def _mirror(p: np.ndarray) -> np.ndarray:
    """Fold x so that bilateral features are written once (for the +x side)."""
    q = p.copy()
    q[..., 0] = np.abs(q[..., 0])
    return q


def part_distances(p: np.ndarray) -> dict[str, np.ndarray]:
    """Signed distances (approximate) of points to the named anatomical parts."""
    m = _mirror(p)
    nose = _smin(
        _round_cone(p, (0, 0.16, 0.83), (0, -0.27, 1.07), 0.045, 0.07),
        _sphere(p, (0, -0.28, 1.06), 0.085),
        0.05,
    )
    nose = _smin(nose, _sphere(m, (0.095, -0.33, 0.96), 0.068), 0.05)
    nose = _smin(nose, _ellipsoid(p, (0, -0.30, 0.90), (0.13, 0.10, 0.14)), 0.06)
    lips = _smin(
        _ellipsoid(p, (0, -0.535, 0.845), (0.2, 0.058, 0.1)),
        _ellipsoid(p, (0, -0.64, 0.825), (0.18, 0.062, 0.1)),
        0.02,
    )
    ear = _ellipsoid(m, (0.72, 0.02, -0.12), (0.085, 0.26, 0.16))
    brow = _ellipsoid(m, (0.3, 0.29, 0.78), (0.19, 0.05, 0.12))
    return {"nose": nose, "lips": lips, "ear": ear, "brow": brow}


def head_sdf(p: np.ndarray) -> np.ndarray:
    """Approximate signed distance of points (..., 3) to the template skin."""
    m = _mirror(p)
    parts = part_distances(p)
    d = _ellipsoid(p, (0, 0.25, -0.15), (0.75, 0.88, 0.98))  # cranium
    d = _smin(d, _ellipsoid(p, (0, -0.25, 0.15), (0.64, 0.8, 0.72)), 0.15)  # face
    d = _smin(d, _ellipsoid(p, (0, -0.68, 0.1), (0.5, 0.34, 0.6)), 0.15)  # jaw
    d = _smin(d, _ellipsoid(p, (0, -0.9, 0.48), (0.2, 0.15, 0.2)), 0.1)  # chin
    neck = _capsule_y(p, 0.0, -0.2, -1.8, -0.45, 0.4)
    neck = _smax(neck, -(p[..., 1] + 1.75), 0.04)  # flat cut at the base
    d = _smin(d, neck, 0.2)
    d = _smin(d, _ellipsoid(m, (0.4, -0.12, 0.56), (0.22, 0.14, 0.2)), 0.1)  # cheekbones
    d = _smin(d, _ellipsoid(p, (0, 0.28, 0.68), (0.5, 0.1, 0.16)), 0.08)  # brow ridge
    # Eye socket: hollow around the eyeball, closed again by the eyelid shell, which
    # an almond-shaped aperture opens in front of the eyeball.
    d = _smax(d, -_ellipsoid(m, EYE_CENTRE, (0.19, 0.15, 0.2)), 0.04)
    lid = _sphere(m, EYE_CENTRE, EYE_RADIUS + 0.014)
    lid = _smax(lid, -_ellipsoid(m, EYE_CENTRE + [0.0, 0.0, 0.14], (0.115, 0.047, 0.12)), 0.012)
    d = _smin(d, lid, 0.03)
    d = _smin(d, parts["nose"], 0.04)
    d = _smax(d, -_ellipsoid(m, (0.052, -0.385, 1.0), (0.028, 0.03, 0.05)), 0.01)  # nostrils
    d = _smin(d, parts["lips"], 0.03)
    d = _smax(d, -_ellipsoid(p, (0, MOUTH_Y, 0.92), (MOUTH_HALF_WIDTH, 0.01, 0.12)), 0.01)
    ear = _smax(parts["ear"], -_ellipsoid(m, (0.8, 0.0, -0.1), (0.04, 0.12, 0.08)), 0.02)
    d = _smin(d, ear, 0.05)
    return d


# ------------------------------------------------------------------------ grid


def _warped(n: int, lo: float, hi: float, peaks: list[tuple[float, float, float]]) -> np.ndarray:
    """n angles in (lo, hi) spaced by a density 1 + sum(a * exp(-((x - c) / w)^2))."""
    x = np.linspace(lo, hi, 4097)
    dens = np.ones_like(x)
    for c, w, a in peaks:
        dens += a * np.exp(-(((x - c) / w) ** 2))
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) * 0.5 * np.diff(x))])
    return np.interp((np.arange(n) + 0.5) / n * cdf[-1], cdf, x)


def _radial_extract(directions: np.ndarray, sdf, t_max: float = 2.6) -> np.ndarray:
    """Outermost crossing of ``sdf`` along rays from the origin (sphere tracing inward)."""
    t = np.full(len(directions), t_max)
    for _ in range(400):
        d = sdf(directions * t[:, None])
        active = d > 1e-5
        if not active.any():
            break
        t = np.where(active, t - np.clip(0.7 * d, 2e-4, 0.05), t)
    lo, hi = t - 0.06, t + 1e-4
    lo = np.maximum(lo, 0.05)
    for _ in range(30):  # bisection between the last outside and first inside point
        mid = 0.5 * (lo + hi)
        inside = sdf(directions * mid[:, None]) <= 0
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    return 0.5 * (lo + hi)


def _eyeball(side: int, segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, faces and gaze angles of one eyeball (pole on the gaze axis +z)."""
    alphas = np.array([4.0, 8.0, PUPIL_DEG, 15.0, 19.0, 22.0, IRIS_DEG, 28.0, 36.0, 48.0,
                       62.0, 78.0, 95.0, 115.0, 140.0, 162.0])
    beta = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    a = np.deg2rad(alphas)[:, None]
    ring = np.stack([np.sin(a) * np.cos(beta), np.sin(a) * np.sin(beta), np.cos(a) * np.ones_like(beta)], -1)
    pts = np.concatenate([[[0, 0, 1.0]], ring.reshape(-1, 3), [[0, 0, -1.0]]])
    ang = np.concatenate([[0.0], np.repeat(alphas, segments), [180.0]])
    faces = _grid_faces(len(alphas), segments, first=1, south=0, north=len(pts) - 1)
    centre = EYE_CENTRE * np.array([side, 1, 1])
    return centre + EYE_RADIUS * pts, faces, ang


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


def mouth_ring(t: Template) -> int:
    """Index of the skin-grid ring the lips part on."""
    segments = t.grid_shape[1]
    return int(np.flatnonzero(t.mouth_line)[0] // segments)


def grid_subset(t: Template, stride: int) -> tuple[np.ndarray, Template]:
    """A coarser template keeping every ``stride``-th ring and segment of the skin grid.

    The kept rings include the mouth ring and the kept segments are mirror-symmetric
    about the face's midline (the segments either side of it are both kept), so a
    coarsened face keeps its mouth line and its bilateral symmetry; eyeballs are kept
    whole. Returns ``(index, template)``: ``index`` (V',) selects the kept vertices of ``t``.
    """
    rings, segments = t.grid_shape
    if stride == 1:
        return np.arange(len(t.vertices)), t
    m = mouth_ring(t)
    keep_r = np.array([r for r in range(rings) if (r - m) % stride == 0])
    half = segments // 2
    keep_s = np.array(sorted([s for s in range(half) if (half - 1 - s) % stride == 0]
                             + [s for s in range(half, segments) if (s - half) % stride == 0]))
    grid = (keep_r[:, None] * segments + keep_s[None, :]).reshape(-1)
    n_grid = rings * segments
    eyes = np.arange(n_grid + 2, len(t.vertices))
    index = np.concatenate([grid, [n_grid, n_grid + 1], eyes])
    n_new = len(grid) + 2
    skin_f = _grid_faces(len(keep_r), len(keep_s), first=0, south=n_new - 2, north=n_new - 1)
    if orientation_ok(t.vertices[index], skin_f).mean() < 0.5:
        skin_f = skin_f[:, [0, 2, 1]]
    eye_faces = t.faces[np.all(t.faces >= n_grid + 2, axis=1)] - (n_grid + 2) + n_new
    faces = np.concatenate([skin_f, eye_faces])
    sub = Template(
        vertices=t.vertices[index], faces=faces, labels=t.labels[index], skin=t.skin[index], eye=t.eye[index],
        eye_angle=t.eye_angle[index], grid_shape=(len(keep_r), len(keep_s)), mouth_line=t.mouth_line[index],
        directions=t.directions[index],
    )
    return index, sub


def _skin_labels(p: np.ndarray, parts: dict[str, np.ndarray]) -> np.ndarray:
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    lab = np.full(len(p), PART["skin"], dtype=np.uint8)
    hairline = np.interp(z, [-0.5, -0.2, 0.3, 0.55], [-0.42, -0.15, 0.45, 0.56])
    hair = (y > hairline) & (parts["ear"] > 0.03)
    lab[hair] = PART["hair"]
    lab[(parts["ear"] < 0.03) & (np.abs(x) > 0.55)] = PART["ears"]
    lab[parts["nose"] < 0.012] = PART["nose"]
    lab[(parts["lips"] < 0.01) | ((np.abs(y - MOUTH_Y) < 0.03) & (np.abs(x) < MOUTH_HALF_WIDTH) & (z > 0.7))] = PART["mouth"]
    brow = (parts["brow"] < 0.0) & (z > 0.6)
    lab[brow & (x > 0)] = PART["left_brow"]
    lab[brow & (x < 0)] = PART["right_brow"]
    return lab


@lru_cache(maxsize=4)
def build_template(rings: int = 100, segments: int = 128, eye_segments: int = 24) -> Template:
    """Build the template head mesh (cached per resolution)."""
    theta = _warped(rings, -np.pi / 2, np.pi / 2, [(np.deg2rad(-15), np.deg2rad(32), 2.0)])
    # Snap the ring nearest the mouth line onto it, so the lips always part on a ring.
    theta_mouth = np.arctan2(MOUTH_Y, 0.93)
    theta[np.argmin(np.abs(theta - theta_mouth))] = theta_mouth
    phi = _warped(segments, -np.pi, np.pi, [(0.0, np.deg2rad(55), 1.6)])
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.cos(th) * np.sin(ph), np.sin(th), np.cos(th) * np.cos(ph)], -1).reshape(-1, 3)
    dirs = np.concatenate([dirs, [[0, -1.0, 0], [0, 1.0, 0]]])
    r = _radial_extract(dirs, head_sdf)
    skin_v = dirs * r[:, None]
    n_skin = len(skin_v)
    skin_f = _grid_faces(rings, segments, first=0, south=n_skin - 2, north=n_skin - 1)
    if orientation_ok(skin_v, skin_f).mean() < 0.5:
        skin_f = skin_f[:, [0, 2, 1]]
    parts = part_distances(skin_v)
    labels = _skin_labels(skin_v, parts)
    ring_of = np.concatenate([np.repeat(np.arange(rings), segments), [-1, -1]])
    mouth_ring = int(np.argmin(np.abs(theta - theta_mouth)))
    mouth_line = (ring_of == mouth_ring) & (np.abs(skin_v[:, 0]) < MOUTH_HALF_WIDTH * 0.97) & (skin_v[:, 2] > 0.7)
    labels[mouth_line] = PART["mouth"]

    verts, faces, lab, eye, ang, mline, dlist = [skin_v], [skin_f], [labels], [np.zeros(n_skin, int)], [np.zeros(n_skin)], [mouth_line], [dirs]
    offset = n_skin
    for k, side in ((1, 1), (2, -1)):
        ev, ef, ea = _eyeball(side, eye_segments)
        if orientation_ok(ev, ef, ev.mean(0)).mean() < 0.5:
            ef = ef[:, [0, 2, 1]]
        verts.append(ev)
        faces.append(ef + offset)
        lab.append(np.full(len(ev), PART["left_eye"] if side > 0 else PART["right_eye"], np.uint8))
        eye.append(np.full(len(ev), k))
        ang.append(ea)
        mline.append(np.zeros(len(ev), bool))
        dlist.append((ev - ev.mean(0)) / EYE_RADIUS)
        offset += len(ev)
    vertices = np.concatenate(verts)
    eye_arr = np.concatenate(eye)
    return Template(
        vertices=vertices.astype(np.float64),
        faces=np.concatenate(faces),
        labels=np.concatenate(lab).astype(np.uint8),
        skin=eye_arr == 0,
        eye=eye_arr,
        eye_angle=np.concatenate(ang),
        grid_shape=(rings, segments),
        mouth_line=np.concatenate(mline),
        directions=np.concatenate(dlist),
    )


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
