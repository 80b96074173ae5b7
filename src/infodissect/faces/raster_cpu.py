"""The CPU backend of the rasterizer: the same z-buffer as :mod:`.raster`, compiled with Numba.

Eager PyTorch spends its time materialising one tensor per arithmetic step for every
(triangle, sample) candidate; at 64 px a face has ~4,000 visible triangles of one or
two samples each, so the CPU renders images in parallel, one compiled loop per image.
The arithmetic is that of :func:`.raster.rasterize` step for step in float32 (same
sample centres, edge functions, inside tolerance, quantised depth keys and index
tie-break), so both backends give the same fragments; the tests check it.

:func:`render_samples` fuses rasterization with the resolve of :func:`.render.render`
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
    return ((y1 - y2) / area, (y2 - y0) / area, (y0 - y1) / area,
            (x2 - x1) / area, (x0 - x2) / area, (x1 - x0) / area,
            (x1 * y2 - x2 * y1) / area, (x2 * y0 - x0 * y2) / area, (x0 * y1 - x1 * y0) / area)


@nb.njit(cache=True, nogil=True)
def _zbuffer(screen, faces, b, height, width, zbuf, coef):
    """Fill ``zbuf`` (H*W,) with the nearest front face's key for image ``b`` of ``screen``,
    and ``coef`` (F, 9) with the barycentric coefficients of every face drawn."""
    half, one, zero = np.float32(0.5), np.float32(1.0), np.float32(0.0)
    tol, fw, fh = np.float32(-1e-5), np.float32(width), np.float32(height)
    zbuf[:] = _EMPTY
    for f in range(faces.shape[0]):
        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
        x0, y0, w0 = screen[b, i0, 0], screen[b, i0, 1], screen[b, i0, 2]
        x1, y1, w1 = screen[b, i1, 0], screen[b, i1, 1], screen[b, i1, 2]
        x2, y2, w2 = screen[b, i2, 0], screen[b, i2, 1], screen[b, i2, 2]
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
    s = max(l0 + l1 + l2, np.float32(1e-12))
    return l0 / s, l1 / s, l2 / s


@nb.njit(parallel=True, cache=True)
def _fragments(screen, faces, height, width):
    bsz = screen.shape[0]
    face = np.empty((bsz, height, width), np.int64)
    bary = np.zeros((bsz, height, width, 3), np.float32)
    half = np.float32(0.5)
    for b in nb.prange(bsz):
        zbuf = np.empty(height * width, np.int64)
        coef = np.empty((faces.shape[0], 9), np.float32)
        _zbuffer(screen, faces, b, height, width, zbuf, coef)
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


@nb.njit(parallel=True, cache=True)
def _resolve(screen, faces, colour, face_labels, background, res, k, gray, n_labels):
    bsz = screen.shape[0]
    size = res * k
    channels = 1 if gray else 3
    img = np.empty((bsz, res, res, channels), np.uint8)
    parts = np.empty((bsz, res, res), np.uint8)
    half, zero, one = np.float32(0.5), np.float32(0.0), np.float32(1.0)
    norm = np.float32(k * k)
    for b in nb.prange(bsz):
        zbuf = np.empty(size * size, np.int64)
        coef = np.empty((faces.shape[0], 9), np.float32)
        _zbuffer(screen, faces, b, size, size, zbuf, coef)
        counts = np.zeros(n_labels, np.int64)
        bg = np.float32(background[b])
        for oy in range(res):
            for ox in range(res):
                acc0, acc1, acc2 = zero, zero, zero
                counts[:] = 0
                for sy in range(oy * k, oy * k + k):
                    for sx in range(ox * k, ox * k + k):
                        key = zbuf[sy * size + sx]
                        if key == _EMPTY:
                            r, g, bl = bg, bg, bg
                            counts[0] += 1
                        else:
                            f = key & _INDEX_MASK
                            l0, l1, l2 = _weights(coef, f, np.float32(sx) + half, np.float32(sy) + half)
                            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
                            r = l0 * colour[b, i0, 0] + l1 * colour[b, i1, 0] + l2 * colour[b, i2, 0]
                            g = l0 * colour[b, i0, 1] + l1 * colour[b, i1, 1] + l2 * colour[b, i2, 1]
                            bl = l0 * colour[b, i0, 2] + l1 * colour[b, i1, 2] + l2 * colour[b, i2, 2]
                            counts[face_labels[f]] += 1
                        if gray:
                            acc0 += r * _GRAY[0] + g * _GRAY[1] + bl * _GRAY[2]
                        else:
                            acc0 += r
                            acc1 += g
                            acc2 += bl
                best = 0
                for lab in range(1, n_labels):
                    if counts[lab] >= counts[best]:
                        best = lab  # ties go to the larger label, as in render._mode_pool
                parts[b, oy, ox] = best
                img[b, oy, ox, 0] = np.uint8(np.floor(min(max(acc0 / norm, zero), one) * np.float32(255.0) + half))
                if not gray:
                    img[b, oy, ox, 1] = np.uint8(np.floor(min(max(acc1 / norm, zero), one) * np.float32(255.0) + half))
                    img[b, oy, ox, 2] = np.uint8(np.floor(min(max(acc2 / norm, zero), one) * np.float32(255.0) + half))
    return img, parts


def _np(t: torch.Tensor, dtype) -> np.ndarray:
    return t.detach().to(dtype=dtype).contiguous().numpy()


def fragments(screen: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(face, bary)`` as :func:`.raster.rasterize` computes them, for CPU tensors."""
    match_numba_threads()
    face, bary = _fragments(_np(screen, torch.float32), _np(faces, torch.int64), height, width)
    return torch.from_numpy(face), torch.from_numpy(bary).to(screen.dtype)


def render_samples(screen: torch.Tensor, faces: torch.Tensor, colour: torch.Tensor, face_labels: torch.Tensor,
                   background: torch.Tensor, resolution: int, antialias: int, gray: bool, n_labels: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterize and resolve in one pass: images (B, R, R, C) uint8 and part labels (B, R, R) uint8.

    ``screen`` (B, V, 3) on the ``resolution * antialias`` sample grid, ``colour``
    (B, V, 3) display-referred vertex colours, ``face_labels`` (F,) part of each face,
    ``background`` (B,) grey level of empty samples.
    """
    match_numba_threads()
    img, parts = _resolve(_np(screen, torch.float32), _np(faces, torch.int64), _np(colour, torch.float32),
                          _np(face_labels, torch.int64), _np(background, torch.float32), resolution, antialias,
                          gray, n_labels)
    return torch.from_numpy(img), torch.from_numpy(parts)
