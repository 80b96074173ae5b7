"""Compiled (Numba) CPU kernels of network dissection: the per-unit histogram of float16 bit patterns and the
counts of each unit's upsampled mask by part label, in one pass each, parallel over units.

Both do what :mod:`.dissection` defines, without temporaries: the histogram counts every value
at its order-preserving 16-bit key; the mask counts evaluate, for every interpolation square
with a corner above the unit's threshold, the bilinear value of each of its pixels in float64
(row by row: the value at each side of the row, then linearly along it; for float16 maps and
power-of-2 strides every step is exact, so the mask is that of the dense reference
:func:`.dissection.upsample`) and add the pixel to its unit's count for its part label.
"""

from __future__ import annotations

import threading

import numba as nb
import numpy as np
from numba.extending import overload

# Numba's default (workqueue) threading layer must not start parallel loops from two threads at
# once; every call from :mod:`.dissection` holds this lock (the kernels are parallel inside).
LOCK = threading.RLock()


@nb.njit(cache=True, nogil=True, parallel=True)
def histogram16(bits, floor, counts, coarse, peak):
    """Count every value of ``bits`` (B, K, P) int16 (float16 bit patterns) at its ordered key (sign bit
    flipped for positive values, every bit for negative ones): in ``coarse`` (K, 256) by its high byte, and in
    ``counts`` (K, 65536) when the key is at least ``floor[k]`` (a lower bound of the unit's threshold, so
    the large table is touched only near the top of each unit's distribution). ``peak`` (B, K): each map's
    largest key, or -1 when the map holds a NaN."""
    b_, k_, p_ = bits.shape
    for k in nb.prange(k_):
        row, low, lo = counts[k], coarse[k], floor[k]
        zeros = np.int64(0)  # +0.0, most values of a ReLU map: counted in a register, not a table
        for b in range(b_):
            top = np.int64(0)
            nan = False
            z = np.int64(0)
            for p in range(p_):
                u = np.int64(bits[b, k, p]) & 0xFFFF
                if u == 0:
                    z += 1
                    continue
                if u >= 0x8000:
                    key = 0xFFFF - u
                else:
                    key = u | 0x8000
                low[key >> 8] += 1
                if key >= lo:
                    row[key] += 1
                if key > top:
                    top = key
                if (u & 0x7C00) == 0x7C00 and (u & 0x03FF) != 0:
                    nan = True
            zeros += z
            peak[b, k] = -1 if nan else (max(top, 0x8000) if z else top)
        low[0x80] += zeros
        if 0x8000 >= lo:
            row[0x8000] += zeros


@nb.njit(cache=True, nogil=True, parallel=True)
def histogram32(bits, bucket, counts):
    """float32 values, two passes of a 16-bit radix select. ``bits`` (B, K, P) int32 bit patterns; with
    ``bucket`` (Q, K) empty (first pass) count each value's ordered key's high 16 bits in ``counts`` (K, 65536);
    else (second pass) count the low 16 bits of the values whose high bits are ``bucket[q, k]`` in ``counts``
    (Q, K, 65536)."""
    b_, k_, p_ = bits.shape
    n_q = bucket.shape[0]
    for k in nb.prange(k_):
        for b in range(b_):
            for p in range(p_):
                u = np.int64(bits[b, k, p]) & 0xFFFFFFFF
                if u >= 0x80000000:
                    key = 0xFFFFFFFF - u
                else:
                    key = u | 0x80000000
                if n_q == 0:
                    counts[0, k, key >> 16] += 1
                else:
                    for q in range(n_q):
                        if (key >> 16) == bucket[q, k]:
                            counts[q, k, key & 0xFFFF] += 1


HALF = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)  # every float16, by bit pattern


def _value(v):
    """A map value as float64: float32 as is, an int16 (float16 bit pattern) through :data:`HALF`."""


@overload(_value)
def _value_impl(v):
    if isinstance(v, nb.types.Float):
        return lambda v: np.float64(v)
    return lambda v: np.float64(HALF[np.int64(v) & 0xFFFF])


def _above(v, t, limit):
    """Whether a map value is above the threshold: float32 ``v > t``; an int16 (float16 bit pattern) by its
    ordered key (as :func:`histogram16`) above ``limit``, the largest key whose value is at most ``t``."""


@overload(_above)
def _above_impl(v, t, limit):
    if isinstance(v, nb.types.Float):
        return lambda v, t, limit: v > t

    def impl(v, t, limit):
        u = np.int64(v) & 0xFFFF
        return ((0xFFFF - u) if u >= 0x8000 else (u | 0x8000)) > limit
    return impl


@nb.njit(cache=True, nogil=True, parallel=True)
def mask_counts(maps, thresholds, limits, labels, stride, offset, before_y, before_x, n_sq_y, n_sq_x, inter,
                area):
    """Count each unit's upsampled mask ``U > T`` by part label.

    Parameters
    ----------
    maps
        (B, K, h, w) float32, or int16 holding float16 bit patterns (read through :data:`HALF`).
    thresholds
        (K,) float64.
    limits
        (K,) int64: for int16 maps, the largest ordered float16 key whose value is at most the threshold
        (:func:`key_limits`); unused for float32 maps.
    labels
        (B, H, W) int64 part labels.
    stride, offset
        Cell ``i`` sits at pixel ``offset + stride * i``.
    before_y, before_x, n_sq_y, n_sq_x
        Squares per axis: square ``j`` spans pixels ``offset + stride * (j - before) + 0 .. stride - 1``
        between cells ``clamp(j - before)`` and ``clamp(j + 1 - before)`` (edge values held).
    inter
        (K, n_labels) int64, added to.
    area
        (B, K) int64, added to.
    """
    b_, k_, h, w = maps.shape
    big_h, big_w = labels.shape[1], labels.shape[2]
    inv = 1.0 / stride
    for k in nb.prange(k_):
        t, limit = thresholds[k], limits[k]
        for b in range(b_):
            # the box of the cells above the threshold (most maps have none); only the squares with one of
            # them as a corner can hold a mask pixel
            i0, i1, j0, j1 = h, -1, w, -1
            for i in range(h):
                for j in range(w):
                    if _above(maps[b, k, i, j], t, limit):
                        i0, i1, j0, j1 = min(i0, i), max(i1, i), min(j0, j), max(j1, j)
            if i1 < 0:
                continue
            sy0 = i0 + before_y - 1 if i0 > 0 else 0
            sy1 = i1 + before_y if i1 < h - 1 else n_sq_y - 1
            sx0 = j0 + before_x - 1 if j0 > 0 else 0
            sx1 = j1 + before_x if j1 < w - 1 else n_sq_x - 1
            for sy in range(sy0, sy1 + 1):
                y0 = min(max(sy - before_y, 0), h - 1)
                y1 = min(max(sy + 1 - before_y, 0), h - 1)
                py0 = offset + stride * (sy - before_y)
                for sx in range(sx0, sx1 + 1):
                    x0 = min(max(sx - before_x, 0), w - 1)
                    x1 = min(max(sx + 1 - before_x, 0), w - 1)
                    c00 = _value(maps[b, k, y0, x0])
                    c10 = _value(maps[b, k, y1, x0])
                    c01 = _value(maps[b, k, y0, x1])
                    c11 = _value(maps[b, k, y1, x1])
                    if c00 <= t and c10 <= t and c01 <= t and c11 <= t:
                        continue
                    px0 = offset + stride * (sx - before_x)
                    count = 0
                    for my in range(stride):
                        py = py0 + my
                        if py < 0 or py >= big_h:
                            continue
                        ty = my * inv
                        left = (1 - ty) * c00 + ty * c10  # the row's values at the square's two sides
                        right = (1 - ty) * c01 + ty * c11
                        if left <= t and right <= t:
                            continue
                        step = right - left
                        for mx in range(stride):
                            px = px0 + mx
                            if px < 0 or px >= big_w:
                                continue
                            if left + (mx * inv) * step > t:
                                inter[k, labels[b, py, px]] += 1
                                count += 1
                    area[b, k] += count


@nb.njit(cache=True, nogil=True, parallel=True)
def kth_from_top(counts, m, bins, above):
    """Per row of ``counts`` (R, n_bins): scanning from the top bin down, the bin holding the value with
    ``m[r]`` values above it (``bins[r]``, -1 if the row holds ``m[r]`` values or fewer) and how many values
    lie in higher bins (``above[r]``)."""
    rows, n_bins = counts.shape
    for r in nb.prange(rows):
        total = 0
        bins[r] = -1
        above[r] = 0
        for j in range(n_bins - 1, -1, -1):
            c = counts[r, j]
            if total + c > m[r]:
                bins[r] = j
                above[r] = total
                break
            total += c
