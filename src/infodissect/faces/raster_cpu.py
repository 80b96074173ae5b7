"""The CPU backend of the rasterizer: the same z-buffer as :mod:`.raster`, compiled with Numba.

Eager PyTorch spends its time materialising one tensor per arithmetic step for every
(triangle, sample) candidate; at 64 px a face has ~4,000 visible triangles of one or
two samples each, so the CPU renders images in parallel, one compiled loop per image.
The arithmetic is that of :func:`.raster.rasterize` step for step in float32 (same
sample centres, edge functions, inside tolerance, depth order and index tie-break; the
z-test compares the pairs its 64-bit keys encode, see :func:`_zbuffer`), so both backends
give the same fragments; the tests check it.

:func:`render_images` fuses, per image, the greying of :func:`.render.grey_albedo`, the vertex
stage of :func:`.render.shade_and_project` (normals, shading, projection), rasterization and
the resolve of :func:`.render.render` (barycentric colour, background, grey, box-filter
downsampling, part-label mode), so no per-vertex or per-sample tensor is ever built.

The loops are written for LLVM's vectoriser, which changes no float32 result (no fast-math:
each lane does the scalar operations in the same order): flat arrays with constant strides,
branch-free bodies, Numpy's error model (no zero-division test, which would be an exit from
the loop), unsigned indices (no wraparound test), stores of every lane (LLVM would otherwise
emit masked stores, which cost AMD cores several times a plain one). It vectorises the
shading of all vertices and, in the z-buffer, each row of a triangle's box, tested in whole
groups of :data:`_LANES` samples.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from ..threads import match_numba_threads

_GRAY = (np.float32(0.299), np.float32(0.587), np.float32(0.114))
_LANES = 8  # a row of a face's box is tested in whole groups of this many samples (an AVX2 register)


@nb.njit(cache=True, nogil=True, inline="always")
def _edge(x0, y0, x1, y1, x2, y2, area):
    """Barycentric coefficients ``a_k, b_k, c_k`` (lambda_k = a_k px + b_k py + c_k)."""
    inv = np.float32(1.0) / area
    return ((y1 - y2) * inv, (y2 - y0) * inv, (y0 - y1) * inv,
            (x2 - x1) * inv, (x0 - x2) * inv, (x1 - x0) * inv,
            (x1 * y2 - x2 * y1) * inv, (x2 * y0 - x0 * y2) * inv, (x0 * y1 - x1 * y0) * inv)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _zbuffer(screen, faces, height, width, depth, nearest, coef, centres):
    """Fill ``nearest`` (H*W + _LANES - 1,) int32 with the nearest front face of the image whose vertices
    are ``screen`` (V, 3) (-1: none) and ``depth`` (same size) float32 with its ``1 - w``, and ``coef``
    (F, 9) with the barycentric coefficients of every face drawn. ``centres`` holds ``float32(i) + 0.5``
    for i < width + _LANES.

    The z-test is that of :func:`.raster.rasterize` without its 64-bit keys: there the key is
    ``int64((1 - w) * float32(2**38 - 1)) << 24 | face``, and since ``float32(2**38 - 1)`` is ``2**38``
    and ``1 - w`` a float32 in [0, 1] and a multiple of ``2**-24`` (w is clamped to [0, 1]), the
    product is exact and an integer: keys order as ``(1 - w, face)`` pairs, compared here in float32
    and int32, eight lanes to an AVX2 register and no integer conversion. Each row of a face's box is
    tested in whole groups of :data:`_LANES` samples, those past its end masked (they keep theirs; the
    spare samples at the end take the last row's overhang)."""
    half, one, zero = np.float32(0.5), np.float32(1.0), np.float32(0.0)
    tol, fw, fh = np.float32(-1e-5), np.float32(width), np.float32(height)
    xyw, tri, cf = screen.reshape(-1), faces.reshape(-1), coef.reshape(-1)
    far, none = np.float32(2.0), np.int32(-1)  # farther than any face; no face
    depth[:] = far
    nearest[:] = none
    for f in range(faces.shape[0]):
        i0, i1, i2 = 3 * tri[3 * f], 3 * tri[3 * f + 1], 3 * tri[3 * f + 2]
        x0, y0, w0 = xyw[i0], xyw[i0 + 1], xyw[i0 + 2]
        x1, y1, w1 = xyw[i1], xyw[i1 + 1], xyw[i1 + 2]
        x2, y2, w2 = xyw[i2], xyw[i2 + 1], xyw[i2 + 2]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        xmin, xmax = min(x0, min(x1, x2)), max(x0, max(x1, x2))
        ymin, ymax = min(y0, min(y1, y2)), max(y0, max(y1, y2))
        if not (area < zero and xmax > zero and xmin < fw and ymax > zero and ymin < fh):
            continue  # back face or off screen
        px0 = int(min(max(np.ceil(xmin - half), zero), fw))
        px1 = int(min(max(np.floor(xmax - half), -one), fw - one))
        py0 = int(min(max(np.ceil(ymin - half), zero), fh))
        py1 = int(min(max(np.floor(ymax - half), -one), fh - one))
        if px1 < px0 or py1 < py0:
            continue  # covers no sample centre
        a0, a1, a2, b0, b1, b2, c0, c1, c2 = _edge(x0, y0, x1, y1, x2, y2, area)
        cf[9 * f], cf[9 * f + 1], cf[9 * f + 2], cf[9 * f + 3], cf[9 * f + 4] = a0, a1, a2, b0, b1
        cf[9 * f + 5], cf[9 * f + 6], cf[9 * f + 7], cf[9 * f + 8] = b2, c0, c1, c2
        da = a0 * w0 + a1 * w1 + a2 * w2
        db = b0 * w0 + b1 * w1 + b2 * w2
        dc = c0 * w0 + c1 * w1 + c2 * w2
        face = np.int32(f)
        last = centres[px1]  # the box's last sample centre
        n = np.uint64(((px1 - px0) // _LANES + 1) * _LANES)
        for py in range(py0, py1 + 1):
            cy = np.float32(py) + half
            e0, e1, e2, ed = b0 * cy, b1 * cy, b2 * cy, db * cy  # the y terms, once per row
            row = np.uint64(py * width + px0)  # unsigned indices: no wraparound test, no slice per row
            for j in range(n):  # branch-free, so that LLVM vectorises it
                cx = centres[np.uint64(px0) + j]
                inside = ((a0 * cx + e0 + c0 >= tol) & (a1 * cx + e1 + c1 >= tol) & (a2 * cx + e2 + c2 >= tol)
                          & (cx <= last))
                d = one - min(max(da * cx + ed + dc, zero), one)
                d = d if inside else far  # never wins
                # The max() are no-ops (no entry is below them) that keep LLVM from turning the
                # write-backs into masked stores, which are slow on AMD cores: every lane is stored.
                cur_d, cur_f = max(depth[row + j], zero), max(nearest[row + j], none)
                wins = (d < cur_d) | ((d == cur_d) & (face < cur_f))
                depth[row + j] = min(d, cur_d)
                nearest[row + j] = face if wins else cur_f


def _centres(n: int) -> np.ndarray:
    """``float32(i) + 0.5`` for i < n + _LANES: the sample centres of a row, with its overhang."""
    return np.arange(n + _LANES, dtype=np.float32) + np.float32(0.5)


@nb.njit(cache=True, nogil=True, inline="always")
def _weights(cf, f, cx, cy):
    """Clamped, normalised barycentric weights of sample centre (cx, cy) in face ``f`` (``cf``: coef, flat)."""
    zero = np.float32(0.0)
    l0 = max(cf[9 * f] * cx + cf[9 * f + 3] * cy + cf[9 * f + 6], zero)
    l1 = max(cf[9 * f + 1] * cx + cf[9 * f + 4] * cy + cf[9 * f + 7], zero)
    l2 = max(cf[9 * f + 2] * cx + cf[9 * f + 5] * cy + cf[9 * f + 8], zero)
    inv = np.float32(1.0) / max(l0 + l1 + l2, np.float32(1e-12))
    return l0 * inv, l1 * inv, l2 * inv


@nb.njit(parallel=True, cache=True)
def _fragments(screen, faces, height, width, centres):
    bsz = screen.shape[0]
    face = np.empty((bsz, height, width), np.int64)
    bary = np.zeros((bsz, height, width, 3), np.float32)
    half = np.float32(0.5)
    for b in nb.prange(bsz):
        depth = np.empty(height * width + _LANES - 1, np.float32)
        nearest = np.empty(height * width + _LANES - 1, np.int32)
        coef = np.empty((faces.shape[0], 9), np.float32)
        _zbuffer(screen[b], faces, height, width, depth, nearest, coef, centres)
        cf = coef.reshape(-1)
        for py in range(height):
            for px in range(width):
                f = nearest[py * width + px]
                face[b, py, px] = f
                if f >= 0:
                    l0, l1, l2 = _weights(cf, f, np.float32(px) + half, np.float32(py) + half)
                    bary[b, py, px, 0], bary[b, py, px, 1], bary[b, py, px, 2] = l0, l1, l2
    return face, bary


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _raw_normals(verts, neighbours, n):
    """Unnormalised central-difference normals (3, V) into ``n`` from flat ``verts`` (3V,) and
    ``neighbours`` (V, 4) (a gather, which LLVM leaves scalar)."""
    nbr = neighbours.reshape(-1)
    for v in range(n.shape[1]):
        a, b, c, d = 3 * nbr[4 * v], 3 * nbr[4 * v + 1], 3 * nbr[4 * v + 2], 3 * nbr[4 * v + 3]
        ax, ay, az = verts[b] - verts[a], verts[b + 1] - verts[a + 1], verts[b + 2] - verts[a + 2]
        bx, by, bz = verts[c] - verts[d], verts[c + 1] - verts[d + 1], verts[c + 2] - verts[d + 2]
        n[0, v], n[1, v], n[2, v] = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@nb.njit(cache=True, nogil=True, inline="always")
def _greyed(a, hair, grey, grey_level):
    """Albedo ``a`` as :func:`.render.grey_albedo` leaves it, for a vertex of hair weight ``hair``."""
    lo, hi = np.float32(0.02), np.float32(1.0)
    g = min(max(a, lo), hi)
    g = g + grey * hair * (grey_level - g)
    return min(max(g if hair > np.float32(0.0) else a, lo), hi)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _vertex_stage(verts, albedo, neighbours, rigid, normals_template, specular, hair, grey, grey_level, rot, scale,
                  shift, light, ambient, pivot_y, dist, focal, size, near, span, wrap, wrap1, screen, colour, n):
    """:func:`.render.grey_albedo` and :func:`.render.shade_and_project` for one image, step for step
    in float32: ``screen`` and ``colour`` (V, 3) from model-space ``verts`` and ``albedo`` (V, 3)
    as :func:`.render.linear_geometry` gives them, greyed by ``grey``.

    ``normals_template`` and the scratch ``n`` are (3, V). After the neighbour gather, one
    branch-free loop over the flat arrays, which LLVM vectorises; every vertex is computed,
    including those on no face (never read)."""
    zero, one, tiny, half = np.float32(0.0), np.float32(1.0), np.float32(1e-12), np.float32(0.5)
    xyz, alb, scr, col = verts.reshape(-1), albedo.reshape(-1), screen.reshape(-1), colour.reshape(-1)
    _raw_normals(xyz, neighbours, n)
    r00, r01, r02 = rot[0, 0], rot[0, 1], rot[0, 2]
    r10, r11, r12 = rot[1, 0], rot[1, 1], rot[1, 2]
    r20, r21, r22 = rot[2, 0], rot[2, 1], rot[2, 2]
    lx, ly, lz = light[0], light[1], light[2]
    s0, s1, s2 = shift[0], shift[1], shift[2]
    amb = ambient
    rest = one - amb
    n0, n1, n2 = n[0], n[1], n[2]
    t0, t1, t2 = normals_template[0], normals_template[1], normals_template[2]
    for v in range(specular.shape[0]):
        nx, ny, nz = n0[v], n1[v], n2[v]
        ilen = one / max(np.sqrt(nx * nx + ny * ny + nz * nz), tiny)
        r = rigid[v]
        nx, ny, nz = t0[v] if r else nx * ilen, t1[v] if r else ny * ilen, t2[v] if r else nz * ilen
        x, y, z = xyz[3 * v], xyz[3 * v + 1] - pivot_y, xyz[3 * v + 2]
        wx = (x * r00 + y * r01 + z * r02) * scale + s0
        wy = (x * r10 + y * r11 + z * r12) * scale + s1
        wz = (x * r20 + y * r21 + z * r22) * scale + s2
        mx = nx * r00 + ny * r01 + nz * r02
        my = nx * r10 + ny * r11 + nz * r12
        mz = nx * r20 + ny * r21 + nz * r22
        vx, vy, vz = -wx, -wy, dist - wz
        ivlen = one / np.sqrt(vx * vx + vy * vy + vz * vz)
        hx, hy, hz = vx * ivlen + lx, vy * ivlen + ly, vz * ivlen + lz
        ihlen = one / max(np.sqrt(hx * hx + hy * hy + hz * hz), tiny)
        diffuse = max((mx * lx + my * ly + mz * lz + wrap) / wrap1, zero)
        n_h = max((mx * hx + my * hy + mz * hz) * ihlen, zero)
        n3 = n_h * n_h * n_h
        n6 = n3 * n3
        n12 = n6 * n6
        spec = n12 * n12 * specular[v] if diffuse > zero else zero
        lit = amb + rest * diffuse
        glint = spec * rest
        h = hair[v]
        ar = _greyed(alb[3 * v], h, grey, grey_level)
        ag = _greyed(alb[3 * v + 1], h, grey, grey_level)
        ab = _greyed(alb[3 * v + 2], h, grey, grey_level)
        col[3 * v] = np.sqrt(max(ar * ar * lit + glint, zero))
        col[3 * v + 1] = np.sqrt(max(ag * ag * lit + glint, zero))
        col[3 * v + 2] = np.sqrt(max(ab * ab * lit + glint, zero))
        inv = one / (dist - wz)
        scr[3 * v] = (wx * focal * inv + one) * half * size
        scr[3 * v + 1] = (one - wy * focal * inv) * half * size
        scr[3 * v + 2] = (inv - near) / span


@nb.njit(cache=True, nogil=True, inline="always")
def _mode(labels, n):
    """The most frequent of ``labels[:n]``, ties to the larger label (as :func:`.render._mode_pool`):
    the first when all agree (most blocks), else by counting pairs."""
    same = True
    for i in range(1, n):
        same &= labels[i] == labels[0]
    if same:
        return labels[0]
    best, best_count = 0, 0
    for i in range(n):
        count = 0
        for j in range(n):
            count += labels[j] == labels[i]
        better = (count > best_count) | ((count == best_count) & (labels[i] > best))
        best = labels[i] if better else best
        best_count = count if better else best_count
    return best


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _resolve_image(nearest, coef, faces, colour, face_labels, bg, res, k, gray, labels, img, parts):
    """Samples to pixels for one image: barycentric colour (``bg`` where empty), grey, box filter
    over each ``k`` x ``k`` block and the block's most frequent part label (``labels`` (k*k,) scratch)."""
    half, zero, one = np.float32(0.5), np.float32(0.0), np.float32(1.0)
    norm = np.float32(k * k)
    samples = res * k
    cf, tri, rgb = coef.reshape(-1), faces.reshape(-1), colour.reshape(-1)
    for oy in range(res):
        for ox in range(res):
            acc0, acc1, acc2 = zero, zero, zero
            i = 0
            for sy in range(oy * k, oy * k + k):
                for sx in range(ox * k, ox * k + k):
                    f = nearest[np.uint64(sy * samples + sx)]
                    if f < 0:
                        r, g, bl = bg, bg, bg
                        labels[i] = 0
                    else:
                        u = np.uint64(f)  # unsigned indices: no wraparound tests
                        l0, l1, l2 = _weights(cf, u, np.float32(sx) + half, np.float32(sy) + half)
                        i0, i1, i2 = np.uint64(3 * tri[3 * u]), np.uint64(3 * tri[3 * u + 1]), np.uint64(3 * tri[3 * u + 2])
                        r = l0 * rgb[i0] + l1 * rgb[i1] + l2 * rgb[i2]
                        g = l0 * rgb[i0 + 1] + l1 * rgb[i1 + 1] + l2 * rgb[i2 + 1]
                        bl = l0 * rgb[i0 + 2] + l1 * rgb[i1 + 2] + l2 * rgb[i2 + 2]
                        labels[i] = face_labels[u]
                    i += 1
                    if gray:
                        acc0 += r * _GRAY[0] + g * _GRAY[1] + bl * _GRAY[2]
                    else:
                        acc0 += r
                        acc1 += g
                        acc2 += bl
            parts[oy, ox] = _mode(labels, i)
            img[oy, ox, 0] = np.uint8(np.floor(min(max(acc0 / norm, zero), one) * np.float32(255.0) + half))
            if not gray:
                img[oy, ox, 1] = np.uint8(np.floor(min(max(acc1 / norm, zero), one) * np.float32(255.0) + half))
                img[oy, ox, 2] = np.uint8(np.floor(min(max(acc2 / norm, zero), one) * np.float32(255.0) + half))


@nb.njit(parallel=True, cache=True)
def _render(verts, albedo, neighbours, rigid, normals_template, specular, hair, grey, grey_level, rot, scale, shift,
            light, ambient, background, faces, face_labels, pivot_y, dist, focal, size, near, span, wrap, wrap1, res, k,
            gray, workers, centres):
    """Every image of a batch, ``workers`` threads each drawing every ``workers``-th image with
    scratch buffers allocated once (a fresh z-buffer per image would cost page faults)."""
    bsz, nv = verts.shape[0], verts.shape[1]
    samples = res * k
    img = np.empty((bsz, res, res, 1 if gray else 3), np.uint8)
    parts = np.empty((bsz, res, res), np.uint8)
    for w in nb.prange(workers):
        screen = np.empty((nv, 3), np.float32)
        colour = np.empty((nv, 3), np.float32)
        normals = np.empty((3, nv), np.float32)
        depth = np.empty(samples * samples + _LANES - 1, np.float32)
        nearest = np.empty(samples * samples + _LANES - 1, np.int32)
        coef = np.empty((faces.shape[0], 9), np.float32)
        labels = np.empty(k * k, np.uint8)
        for b in range(w, bsz, workers):
            _vertex_stage(verts[b], albedo[b], neighbours, rigid, normals_template, specular, hair, grey[b],
                          grey_level, rot[b], scale[b], shift[b], light[b], ambient[b], pivot_y, dist, focal, size,
                          near, span, wrap, wrap1, screen, colour, normals)
            _zbuffer(screen, faces, samples, samples, depth, nearest, coef, centres)
            _resolve_image(nearest, coef, faces, colour, face_labels, background[b], res, k, gray, labels, img[b],
                           parts[b])
    return img, parts


@nb.njit(parallel=True, cache=True)
def _transpose(src, dst):
    """``dst[j, i] = src[i, j]`` in 32 x 32 tiles, rows of tiles in parallel."""
    n, m = src.shape
    tile = 32
    for t in nb.prange((n + tile - 1) // tile):
        i0, i1 = t * tile, min(t * tile + tile, n)
        for j0 in range(0, m, tile):
            for j in range(j0, min(j0 + tile, m)):
                for i in range(i0, i1):
                    dst[j, i] = src[i, j]


def transposed(x: torch.Tensor) -> torch.Tensor:
    """``x.T.contiguous()`` for a 2-D CPU tensor, copied in cache-sized tiles on PyTorch's threads
    (about twice as fast as PyTorch's copy for the (V*3, B) products of :func:`.render._addmm`)."""
    match_numba_threads()
    src = x.detach().contiguous().numpy()
    dst = np.empty((src.shape[1], src.shape[0]), src.dtype)
    _transpose(src, dst)
    return torch.from_numpy(dst)


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().to(dtype=dtype).contiguous().numpy()


def _indices(t: torch.Tensor) -> np.ndarray:
    """Non-negative indices as uint32: half the cache of int64, and known to LLVM not to be negative
    (no wraparound test when they index)."""
    return _np(t, torch.int32).astype(np.uint32)


def fragments(screen: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(face, bary)`` as :func:`.raster.rasterize` computes them, for CPU tensors."""
    match_numba_threads()
    face, bary = _fragments(_np(screen, torch.float32), _indices(faces), height, width, _centres(width))
    return torch.from_numpy(face), torch.from_numpy(bary).to(screen.dtype)


def _mesh_arrays(model) -> tuple[np.ndarray, ...]:
    """The model's constant mesh arrays as the compiled pass takes them (cached on the model):
    neighbours (missing ones as 0), rigid (vertices without neighbours), template normals (3, V),
    specular, hair weights, faces and face labels (uint8)."""
    def make() -> tuple[np.ndarray, ...]:
        return (_indices(model.neighbours.clamp(min=0)), _np(model.neighbours[:, 0] < 0, torch.bool),
                _np(model.normals_template.T, torch.float32), _np(model.specular, torch.float32),
                _np(model.hair, torch.float32), _indices(model.faces), _np(model.face_labels, torch.uint8))

    return model._cached("cpu_render_arrays", make)


def render_images(model, verts: torch.Tensor, albedo: torch.Tensor, grey: torch.Tensor, ps, camera, n_labels: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Greying, vertex stage, rasterization and resolve of :func:`.render.render`, one compiled pass per image.

    ``verts``, ``albedo`` (B, V, 3) and ``grey`` (B,) from :func:`.render.linear_geometry`, ``ps``
    the :class:`.render.Pose`; returns images (B, R, R, C) uint8 and part labels (B, R, R) uint8
    (``n_labels`` of them at most, at most 256).
    """
    from .albedo import GREY_HAIR
    from .render import PIVOT_Y, WRAP

    if n_labels > 256:
        raise ValueError(f"part labels are drawn as uint8: {n_labels} labels do not fit")
    match_numba_threads()
    f32 = np.float32
    focal, size, near, far = camera.constants()
    neighbours, rigid, normals_template, specular, hair, faces, face_labels = _mesh_arrays(model)
    args = (_np(verts, torch.float32), _np(albedo, torch.float32), neighbours, rigid, normals_template, specular, hair,
            _np(grey, torch.float32), f32(GREY_HAIR), _np(ps.rot, torch.float32), _np(ps.scale, torch.float32),
            _np(ps.shift, torch.float32), _np(ps.light, torch.float32), _np(ps.ambient, torch.float32),
            _np(ps.background, torch.float32), faces, face_labels, f32(PIVOT_Y), f32(camera.distance), f32(focal),
            f32(size), f32(near), f32(far - near), f32(WRAP), f32(1.0 + WRAP), camera.resolution, camera.antialias,
            camera.color == "gray", max(1, min(nb.get_num_threads(), verts.shape[0])), _centres(camera.samples))
    img, parts = _render(*args)
    return torch.from_numpy(img), torch.from_numpy(parts)
