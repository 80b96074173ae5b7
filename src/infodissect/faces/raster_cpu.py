"""The CPU backend of the rasterizer: the same z-buffer as :mod:`.raster`, compiled with Numba.

Eager PyTorch spends its time materialising one tensor per arithmetic step for every
(triangle, sample) candidate; at 64 px a face has ~4,000 visible triangles of one or
two samples each, so the CPU renders images in parallel, one compiled loop per image.
The arithmetic is that of :func:`.raster.rasterize` step for step in float32 (same
sample centres, edge functions, inside tolerance, quantised depth keys and index
tie-break), so both backends give the same fragments; the tests check it.

:func:`render_images` fuses, per image, the vertex stage of :func:`.render.shade_and_project`
(normals, shading, projection), rasterization and the resolve of :func:`.render.render`
(barycentric colour, background, grey, box-filter downsampling, part-label mode), so
no per-sample tensor is ever built.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from ..threads import match_numba_threads

_DEPTH_SCALE = np.float32((1 << 39) - 1)  # as .raster: float32((1 << _DEPTH_BITS) - 1)
_INDEX_BITS = 24
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_EMPTY = np.iinfo(np.int64).max
_GRAY = (np.float32(0.299), np.float32(0.587), np.float32(0.114))


@nb.njit(cache=True, nogil=True, inline="always")
def _edge(x0, y0, x1, y1, x2, y2, area):
    """Barycentric coefficients ``a_k, b_k, c_k`` (lambda_k = a_k px + b_k py + c_k)."""
    inv = np.float32(1.0) / area
    return ((y1 - y2) * inv, (y2 - y0) * inv, (y0 - y1) * inv,
            (x2 - x1) * inv, (x0 - x2) * inv, (x1 - x0) * inv,
            (x1 * y2 - x2 * y1) * inv, (x2 * y0 - x0 * y2) * inv, (x0 * y1 - x1 * y0) * inv)


@nb.njit(cache=True, nogil=True)
def _zbuffer(screen, faces, height, width, zbuf, coef):
    """Fill ``zbuf`` (H*W,) with the nearest front face's key for the image whose vertices are ``screen`` (V, 3),
    and ``coef`` (F, 9) with the barycentric coefficients of every face drawn."""
    half, one, zero = np.float32(0.5), np.float32(1.0), np.float32(0.0)
    tol, fw, fh = np.float32(-1e-5), np.float32(width), np.float32(height)
    zbuf[:] = _EMPTY
    for f in range(faces.shape[0]):
        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
        x0, y0, w0 = screen[i0, 0], screen[i0, 1], screen[i0, 2]
        x1, y1, w1 = screen[i1, 0], screen[i1, 1], screen[i1, 2]
        x2, y2, w2 = screen[i2, 0], screen[i2, 1], screen[i2, 2]
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
        coef[f, 0], coef[f, 1], coef[f, 2], coef[f, 3], coef[f, 4] = a0, a1, a2, b0, b1
        coef[f, 5], coef[f, 6], coef[f, 7], coef[f, 8] = b2, c0, c1, c2
        da = a0 * w0 + a1 * w1 + a2 * w2
        db = b0 * w0 + b1 * w1 + b2 * w2
        dc = c0 * w0 + c1 * w1 + c2 * w2
        for py in range(py0, py1 + 1):
            cy = np.float32(py) + half
            e0, e1, e2, ed = b0 * cy, b1 * cy, b2 * cy, db * cy  # the y terms, once per row
            row = py * width
            for px in range(px0, px1 + 1):  # branch-free: the inside test is unpredictable
                cx = np.float32(px) + half
                inside = ((a0 * cx + e0 + c0 >= tol) & (a1 * cx + e1 + c1 >= tol) & (a2 * cx + e2 + c2 >= tol))
                wz = min(max(da * cx + ed + dc, zero), one)
                key = (np.int64((one - wz) * _DEPTH_SCALE) << _INDEX_BITS) | f
                cur = zbuf[row + px]
                zbuf[row + px] = key if inside and key < cur else cur


@nb.njit(cache=True, nogil=True, inline="always")
def _weights(coef, f, cx, cy):
    """Clamped, normalised barycentric weights of sample centre (cx, cy) in face ``f``."""
    zero = np.float32(0.0)
    l0 = max(coef[f, 0] * cx + coef[f, 3] * cy + coef[f, 6], zero)
    l1 = max(coef[f, 1] * cx + coef[f, 4] * cy + coef[f, 7], zero)
    l2 = max(coef[f, 2] * cx + coef[f, 5] * cy + coef[f, 8], zero)
    inv = np.float32(1.0) / max(l0 + l1 + l2, np.float32(1e-12))
    return l0 * inv, l1 * inv, l2 * inv


@nb.njit(parallel=True, cache=True)
def _fragments(screen, faces, height, width):
    bsz = screen.shape[0]
    face = np.empty((bsz, height, width), np.int64)
    bary = np.zeros((bsz, height, width, 3), np.float32)
    half = np.float32(0.5)
    for b in nb.prange(bsz):
        zbuf = np.empty(height * width, np.int64)
        coef = np.empty((faces.shape[0], 9), np.float32)
        _zbuffer(screen[b], faces, height, width, zbuf, coef)
        for py in range(height):
            for px in range(width):
                key = zbuf[py * width + px]
                if key == _EMPTY:
                    face[b, py, px] = -1
                    continue
                f = key & _INDEX_MASK
                face[b, py, px] = f
                l0, l1, l2 = _weights(coef, f, np.float32(px) + half, np.float32(py) + half)
                bary[b, py, px, 0], bary[b, py, px, 1], bary[b, py, px, 2] = l0, l1, l2
    return face, bary


@nb.njit(cache=True, nogil=True)
def _vertex_stage(verts, albedo, neighbours, rigid, used, normals_template, specular, rot, scale, shift, light, ambient,
                  pivot_y, dist, focal, size, near, span, wrap, wrap1, screen, colour):
    """:func:`.render.shade_and_project` for one image, step for step in float32: ``screen``
    and ``colour`` (V, 3) from model-space ``verts`` and display ``albedo`` (V, 3).

    Written as branch-free loops over the vertices, which LLVM vectorises."""
    zero, one, tiny, half = np.float32(0.0), np.float32(1.0), np.float32(1e-12), np.float32(0.5)
    r00, r01, r02 = rot[0, 0], rot[0, 1], rot[0, 2]
    r10, r11, r12 = rot[1, 0], rot[1, 1], rot[1, 2]
    r20, r21, r22 = rot[2, 0], rot[2, 1], rot[2, 2]
    lx, ly, lz = light[0], light[1], light[2]
    amb = ambient
    rest = one - amb
    nv = verts.shape[0]
    n = np.empty((nv, 3), np.float32)
    for v in range(nv):
        a, b, c, d = neighbours[v, 0], neighbours[v, 1], neighbours[v, 2], neighbours[v, 3]
        ax, ay, az = verts[b, 0] - verts[a, 0], verts[b, 1] - verts[a, 1], verts[b, 2] - verts[a, 2]
        bx, by, bz = verts[c, 0] - verts[d, 0], verts[c, 1] - verts[d, 1], verts[c, 2] - verts[d, 2]
        n[v, 0], n[v, 1], n[v, 2] = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
    for v in range(nv):
        if not used[v]:
            continue  # on no face: its colour and position are never read
        nx, ny, nz = n[v, 0], n[v, 1], n[v, 2]
        ilen = one / max(np.sqrt(nx * nx + ny * ny + nz * nz), tiny)
        nx, ny, nz = nx * ilen, ny * ilen, nz * ilen
        if rigid[v]:
            nx, ny, nz = normals_template[v, 0], normals_template[v, 1], normals_template[v, 2]
        x, y, z = verts[v, 0], verts[v, 1] - pivot_y, verts[v, 2]
        wx = (x * r00 + y * r01 + z * r02) * scale + shift[0]
        wy = (x * r10 + y * r11 + z * r12) * scale + shift[1]
        wz = (x * r20 + y * r21 + z * r22) * scale + shift[2]
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
        colour[v, 0] = np.sqrt(max(albedo[v, 0] * albedo[v, 0] * lit + glint, zero))
        colour[v, 1] = np.sqrt(max(albedo[v, 1] * albedo[v, 1] * lit + glint, zero))
        colour[v, 2] = np.sqrt(max(albedo[v, 2] * albedo[v, 2] * lit + glint, zero))
        inv = one / (dist - wz)
        screen[v, 0] = (wx * focal * inv + one) * half * size
        screen[v, 1] = (one - wy * focal * inv) * half * size
        screen[v, 2] = (inv - near) / span


@nb.njit(cache=True, nogil=True)
def _resolve_image(zbuf, coef, faces, colour, face_labels, bg, res, k, gray, counts, img, parts):
    """Samples to pixels for one image: barycentric colour (``bg`` where empty), grey, box filter
    over each ``k`` x ``k`` block and the block's most frequent part label."""
    half, zero, one = np.float32(0.5), np.float32(0.0), np.float32(1.0)
    norm = np.float32(k * k)
    samples = res * k
    for oy in range(res):
        for ox in range(res):
            acc0, acc1, acc2 = zero, zero, zero
            counts[:] = 0
            for sy in range(oy * k, oy * k + k):
                for sx in range(ox * k, ox * k + k):
                    key = zbuf[sy * samples + sx]
                    if key == _EMPTY:
                        r, g, bl = bg, bg, bg
                        counts[0] += 1
                    else:
                        f = key & _INDEX_MASK
                        l0, l1, l2 = _weights(coef, f, np.float32(sx) + half, np.float32(sy) + half)
                        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                        r = l0 * colour[i0, 0] + l1 * colour[i1, 0] + l2 * colour[i2, 0]
                        g = l0 * colour[i0, 1] + l1 * colour[i1, 1] + l2 * colour[i2, 1]
                        bl = l0 * colour[i0, 2] + l1 * colour[i1, 2] + l2 * colour[i2, 2]
                        counts[face_labels[f]] += 1
                    if gray:
                        acc0 += r * _GRAY[0] + g * _GRAY[1] + bl * _GRAY[2]
                    else:
                        acc0 += r
                        acc1 += g
                        acc2 += bl
            best = 0
            for lab in range(1, counts.shape[0]):
                if counts[lab] >= counts[best]:
                    best = lab  # ties go to the larger label, as in render._mode_pool
            parts[oy, ox] = best
            img[oy, ox, 0] = np.uint8(np.floor(min(max(acc0 / norm, zero), one) * np.float32(255.0) + half))
            if not gray:
                img[oy, ox, 1] = np.uint8(np.floor(min(max(acc1 / norm, zero), one) * np.float32(255.0) + half))
                img[oy, ox, 2] = np.uint8(np.floor(min(max(acc2 / norm, zero), one) * np.float32(255.0) + half))


@nb.njit(parallel=True, cache=True)
def _render(verts, albedo, neighbours, rigid, used, normals_template, specular, rot, scale, shift, light, ambient,
            background, faces, face_labels, pivot_y, dist, focal, size, near, span, wrap, wrap1, res, k, gray,
            n_labels, workers):
    """Every image of a batch, ``workers`` threads each drawing every ``workers``-th image with
    scratch buffers allocated once (a fresh z-buffer per image would cost page faults)."""
    bsz, nv = verts.shape[0], verts.shape[1]
    samples = res * k
    img = np.empty((bsz, res, res, 1 if gray else 3), np.uint8)
    parts = np.empty((bsz, res, res), np.uint8)
    for w in nb.prange(workers):
        screen = np.empty((nv, 3), np.float32)
        colour = np.empty((nv, 3), np.float32)
        zbuf = np.empty(samples * samples, np.int64)
        coef = np.empty((faces.shape[0], 9), np.float32)
        counts = np.zeros(n_labels, np.int64)
        for b in range(w, bsz, workers):
            _vertex_stage(verts[b], albedo[b], neighbours, rigid, used, normals_template, specular, rot[b], scale[b],
                          shift[b], light[b], ambient[b], pivot_y, dist, focal, size, near, span, wrap, wrap1, screen,
                          colour)
            _zbuffer(screen, faces, samples, samples, zbuf, coef)
            _resolve_image(zbuf, coef, faces, colour, face_labels, background[b], res, k, gray, counts, img[b],
                           parts[b])
    return img, parts


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().to(dtype=dtype).contiguous().numpy()


def fragments(screen: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(face, bary)`` as :func:`.raster.rasterize` computes them, for CPU tensors."""
    match_numba_threads()
    face, bary = _fragments(_np(screen, torch.float32), _np(faces, torch.int64), height, width)
    return torch.from_numpy(face), torch.from_numpy(bary).to(screen.dtype)


def _mesh_arrays(model) -> tuple[np.ndarray, ...]:
    """The model's constant mesh arrays as the compiled pass takes them (cached on the model):
    neighbours (missing ones as 0), rigid (vertices without neighbours), used (vertices some
    face uses), template normals, specular, faces and face labels."""
    def make() -> tuple[np.ndarray, ...]:
        used = np.zeros(model.n_vertices, bool)
        used[model.faces.cpu().numpy().reshape(-1)] = True
        return (_np(model.neighbours.clamp(min=0), torch.int64), _np(model.neighbours[:, 0] < 0, torch.bool), used,
                _np(model.normals_template, torch.float32), _np(model.specular, torch.float32),
                _np(model.faces, torch.int64), _np(model.face_labels, torch.int64))

    return model._cached("cpu_mesh_arrays", make)


def render_images(model, verts: torch.Tensor, albedo: torch.Tensor, ps, camera, n_labels: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The vertex stage, rasterization and resolve of :func:`.render.render`, one compiled pass per image.

    ``verts`` and ``albedo`` (B, V, 3) from :func:`.render.face_geometry`, ``ps`` the
    :class:`.render.Pose`; returns images (B, R, R, C) uint8 and part labels (B, R, R) uint8.
    """
    from .render import PIVOT_Y, WRAP

    match_numba_threads()
    f32 = np.float32
    focal, size, near, far = camera.constants()
    neighbours, rigid, used, normals_template, specular, faces, face_labels = _mesh_arrays(model)
    return tuple(torch.from_numpy(a) for a in _render(
        _np(verts, torch.float32), _np(albedo, torch.float32), neighbours, rigid, used, normals_template, specular,
        _np(ps.rot, torch.float32), _np(ps.scale, torch.float32), _np(ps.shift, torch.float32),
        _np(ps.light, torch.float32), _np(ps.ambient, torch.float32), _np(ps.background, torch.float32), faces,
        face_labels, f32(PIVOT_Y), f32(camera.distance), f32(focal), f32(size), f32(near),
        f32(far - near), f32(WRAP), f32(1.0 + WRAP), camera.resolution, camera.antialias, camera.color == "gray", n_labels,
        max(1, min(nb.get_num_threads(), verts.shape[0]))))
