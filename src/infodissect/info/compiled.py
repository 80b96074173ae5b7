"""Compiled (Numba) CPU kernels of the MI engine: copula ranking and one-pass per-variable moments.

**Ranking.**
:func:`.copula._rank_rows` orders each variable's samples by a unique 64-bit key (the
float32 value's order above a seeded per-variable tie-breaker), so any correct sort
gives the same ranks. On the CPU a least-significant-digit radix sort (six 11-bit
digits, digits that every key shares skipped) of each row, in parallel over rows,
is several times faster than a comparison sort, and the normal scores are written
straight into the output, so no rank array is built. Integer arithmetic repeats the
PyTorch code bit for bit (the tests check ranks and scores against it).

**Moments.** :func:`copula_moments` reads each copula-normalised variable once and
returns its dot products with the (standardised) continuous factors and its class sums
of x and x^2 for every discrete factor: everything the univariate estimators need.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..threads import match_numba_threads

_MASK31 = (1 << 31) - 1
_DIGIT = 11
_BUCKETS = 1 << _DIGIT
_PASSES = 6  # 66 bits >= 64


@nb.njit(cache=True, nogil=True, inline="always")
def _splitmix64(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def weights(n: int, wide: bool) -> np.ndarray:
    """The fingerprint weights of positions 0..n-1: ``splitmix64(pos + 1) | 1`` as int64, or
    truncated to int32 (``wide=False``, for rows hashed by their float32 bits)."""
    w = _weights(n).view(np.int64)
    return w if wide else w.astype(np.int32).astype(np.int64)


@nb.njit(cache=True)
def _weights(n):
    out = np.empty(n, np.uint64)
    for j in range(n):
        out[j] = _splitmix64(np.uint64(j + 1)) | np.uint64(1)
    return out


@nb.njit(cache=True, nogil=True)
def _row_keys(bits32, ints, w, wide, seed, keys):
    """Fill ``keys`` (n,) uint64 with a row's radix-sortable keys (order bits above tie-breaker)."""
    n = bits32.shape[0]
    acc = np.int64(0)
    if wide:  # int64 products, wrapping, summed wrapping (as torch does for float64 rows)
        for j in range(n):
            acc += ints[j] * w[j]
    else:  # int32 products (wrapping in int32), summed exactly in int64
        for j in range(n):
            p = (np.int64(bits32[j]) * w[j]) & np.int64(0xFFFFFFFF)
            acc += p - (np.int64(1) << 32) if p >= (np.int64(1) << 31) else p
    h = _splitmix64(np.uint64(acc) ^ np.uint64(seed))
    mask = np.uint64(_MASK31)
    a = np.int64((h & mask) | np.uint64(1))
    b = np.int64(((h >> np.uint64(31)) & mask) | np.uint64(1))
    c = np.int64((h >> np.uint64(33)) & mask)
    m31 = np.int64(_MASK31)
    for j in range(n):
        z = np.int64(j) ^ c
        z = (z * a) & m31
        z ^= z >> 16
        z = (z * b) & m31
        z ^= z >> 15
        v = np.int64(bits32[j])
        order = v ^ ((v >> 31) & np.int64(0x7FFFFFFF))  # signed order of the float32 bit pattern
        keys[j] = np.uint64((order << 31) | z) ^ np.uint64(1 << 63)  # flip the sign: unsigned order


@nb.njit(cache=True, nogil=True)
def _radix_order(keys, order, key2, order2, count):
    """Sort ``keys`` (n,) uint64 with their positions; returns the array holding the sorted positions."""
    n = keys.shape[0]
    count[:, :] = 0
    dmask = np.uint64(_BUCKETS - 1)
    for j in range(n):
        k = keys[j]
        for p in range(_PASSES):
            count[p, (k >> np.uint64(p * _DIGIT)) & dmask] += 1
        order[j] = j
    src_k, src_o, dst_k, dst_o = keys, order, key2, order2
    for p in range(_PASSES):
        shift = np.uint64(p * _DIGIT)
        if count[p, (src_k[0] >> shift) & dmask] == n:
            continue  # every key shares this digit
        total = 0
        for d in range(_BUCKETS):
            c = count[p, d]
            count[p, d] = total
            total += c
        for j in range(n):
            k = src_k[j]
            d = (k >> shift) & dmask
            pos = count[p, d]
            count[p, d] = pos + 1
            dst_k[pos] = k
            dst_o[pos] = src_o[j]
        src_k, dst_k = dst_k, src_k
        src_o, dst_o = dst_o, src_o
    return src_o


@nb.njit(parallel=True, cache=True)
def _copnorm_rows(bits32, ints, w, wide, seed, scores, out):
    """Per row: out[row, j] = scores[rank of sample j] (ranks by the unique keys; scores 0..n-1 give the ranks)."""
    m, n = bits32.shape
    for i in nb.prange(m):
        keys = np.empty(n, np.uint64)
        key2 = np.empty(n, np.uint64)
        order = np.empty(n, np.int64)
        order2 = np.empty(n, np.int64)
        count = np.empty((_PASSES, _BUCKETS), np.int64)
        _row_keys(bits32[i], ints[i], w, wide, seed, keys)
        sorted_pos = _radix_order(keys, order, key2, order2, count)
        for r in range(n):
            out[i, sorted_pos[r]] = scores[r]


def _inputs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """float32 bits (m, n) int32, the integers hashed (int64 view of float64 rows, else the bits), wide."""
    bits = (rows.astype(np.float32) + np.float32(0.0)).view(np.int32)
    if rows.dtype == np.float64:
        return bits, rows.view(np.int64), True
    return bits, bits, False


def copnorm_rows(rows: np.ndarray, seed: int, scores: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Copula values of rows (m, n) whose values float32 represents exactly, into ``out`` (m, n)."""
    bits, ints, wide = _inputs(rows)
    match_numba_threads()
    _copnorm_rows(bits, ints, weights(rows.shape[1], wide), wide, np.uint64(int(seed) & (2**64 - 1)), scores, out)
    return out


def rank_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """Ranks (m, n) int64 of rows whose values float32 represents exactly (the 'scores' 0..n-1)."""
    return copnorm_rows(rows, seed, np.arange(rows.shape[1], dtype=np.int64), np.empty(rows.shape, np.int64))


@nb.njit(parallel=True, cache=True)
def _moments(rows, ys, codes, dots, s1, s2):
    m, n = rows.shape
    nq, nd = ys.shape[1], codes.shape[1]
    for i in nb.prange(m):
        for j in range(n):
            v = rows[i, j]
            for q in range(nq):
                dots[i, q] += v * ys[j, q]
            for f in range(nd):
                c = codes[j, f]
                s1[i, f, c] += v
                s2[i, f, c] += v * v


def copula_moments(rows: np.ndarray, ys: np.ndarray, codes: np.ndarray, n_classes: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass over rows (m, n): ``rows @ ys`` (m, Qc) and, per discrete factor (columns of
    ``codes`` (n, Qd)), the class sums of x and of x^2 (m, Qd, n_classes), in float64."""
    m = rows.shape[0]
    dots = np.zeros((m, ys.shape[1]))
    s1 = np.zeros((m, codes.shape[1], n_classes))
    s2 = np.zeros((m, codes.shape[1], n_classes))
    match_numba_threads()
    _moments(np.ascontiguousarray(rows, dtype=np.float64), np.ascontiguousarray(ys, dtype=np.float64),
             np.ascontiguousarray(codes, dtype=np.int64), dots, s1, s2)
    return dots, s1, s2
