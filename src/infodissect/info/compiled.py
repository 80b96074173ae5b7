"""Compiled (Numba) CPU kernels of the MI engine: copula ranking and one-pass per-variable moments.

**Ranking.**
:func:`.copula._rank_rows` orders each variable's samples by value, ties by a seeded
per-variable tie-breaker (a bijection of the sample positions keyed by a hash of the
seed, the variable's id and its values), so any correct sort gives the same ranks. On
the CPU each row (in parallel over rows) turns its values into unsigned 64-bit order
keys (of the float32 bits where float32 holds every value, else of the float64 bits,
-0.0 read as 0.0), keeps only the bits in which the keys differ, packs them with the
position into one uint64 and sorts that by a least-significant-digit radix sort (digits
of at most 11 bits, digits every key shares skipped); each run of equal packed values
is then sorted by the value bits that did not fit and the tie-breaker (an insertion
sort for short runs, a radix sort for long ones). Where the values take few bits (ties
certain: 8-bit pixels) the tie-breaker joins the packed key and one sort does all; a large
tie at the row's minimum (ReLU zeros) is split off first and sorted by tie-breaker alone. The
normal scores are written straight into the output (each row's rank order held only while
it is written), so no rank array is built. Integer
arithmetic repeats the PyTorch code bit for bit (the tests check ranks and scores
against it).

**Moments.** :func:`copula_moments` reads each copula-normalised variable once and
returns its dot products with the (standardised) continuous factors and its class sums
of x and x^2 for every discrete factor: everything the univariate estimators need.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ..threads import match_numba_threads

_MASK31 = (1 << 31) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_DIGIT = 11  # the widest radix digit (2048 buckets)
_MAX_PASSES = 6  # 66 bits >= 64
_SHORT_RUN = 48  # runs of ties up to this long are insertion-sorted


@nb.njit(cache=True, nogil=True)
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
def _mix(acc, seed, rid):
    """The row's fingerprint: ``splitmix64(acc ^ seed ^ splitmix64(id + golden))`` (uint64)."""
    return _splitmix64(np.uint64(acc) ^ seed ^ _splitmix64(rid + np.uint64(_GOLDEN)))


@nb.njit(cache=True, nogil=True)
def _acc_wide(ints, w):
    """Sum of int64 products of a row's float64 bits with the weights (wrapping, as torch does)."""
    acc = np.int64(0)
    for j in range(ints.shape[0]):
        acc += ints[j] * w[j]
    return acc


@nb.njit(cache=True, nogil=True)
def _acc_narrow(bits32, w):
    """Sum in int64 of the int32 products (wrapping in int32) of a row's float32 bits with the weights."""
    acc = np.int64(0)
    for j in range(bits32.shape[0]):
        p = (np.int64(bits32[j]) * w[j]) & np.int64(0xFFFFFFFF)
        acc += p - (np.int64(1) << 32) if p >= (np.int64(1) << 31) else p
    return acc


@nb.njit(cache=True, nogil=True)
def _tie_params(h):
    """The multipliers a, b and the xor c of the row's bijection, from its fingerprint ``h``."""
    mask = np.uint64(_MASK31)
    a = np.int64((h & mask) | np.uint64(1))
    b = np.int64(((h >> np.uint64(31)) & mask) | np.uint64(1))
    c = np.int64((h >> np.uint64(33)) & mask)
    return a, b, c


@nb.njit(cache=True, nogil=True)
def _tie(j, a, b, c):
    """The 31-bit tie-breaker of sample ``j`` (:func:`.copula._bijection`)."""
    m31 = np.int64(_MASK31)
    z = np.int64(j) ^ c
    z = (z * a) & m31
    z ^= z >> 16
    z = (z * b) & m31
    z ^= z >> 15
    return z


@nb.njit(cache=True, nogil=True)
def _bit_length(v):
    """Number of bits of the uint64 ``v`` (0 for 0)."""
    n = 0
    while v:
        v >>= np.uint64(1)
        n += 1
    return n


@nb.njit(cache=True, nogil=True)
def _window(keys, m, shift):
    """The bits [lo, hi) in which the first ``m`` uint64 ``keys >> shift`` differ (every key shares
    the others); (0, 0) if all are equal."""
    k_or, k_and = np.uint64(0), ~np.uint64(0)
    for j in range(m):
        k = keys[j] >> np.uint64(shift)
        k_or |= k
        k_and &= k
    diff = k_or ^ k_and
    if diff == 0:
        return 0, 0
    hi = _bit_length(diff)
    return _bit_length(diff ^ (diff - np.uint64(1))) - 1, hi  # the lowest differing bit, one past the highest


@nb.njit(cache=True, nogil=True)
def _radix_sort(keys, key2, order, order2, count, n, lo, nbits, carry):
    """Stable LSD radix sort of the first ``n`` uint64 ``keys`` by their bits [lo, lo + nbits) (the key's
    other bits shared or ignored), in as few passes of at most 11 bits as cover them, digits
    every key shares skipped; ``order`` travels with the keys when ``carry``. Returns the
    arrays that hold the sorted keys and their order."""
    if nbits <= 0:
        return keys, order
    passes = (nbits + _DIGIT - 1) // _DIGIT
    width = (nbits + passes - 1) // passes  # balanced digits
    # few keys: narrower digits (fewer buckets to clear), at most _MAX_PASSES passes
    width = max(min(width, _bit_length(np.uint64(n))), (nbits + _MAX_PASSES - 1) // _MAX_PASSES, 1)
    passes = (nbits + width - 1) // width
    dmask = np.uint64((1 << width) - 1)
    buckets = 1 << width
    count[:passes, :buckets] = 0
    for j in range(n):
        k = keys[j] >> np.uint64(lo)
        for p in range(passes):
            count[p, (k >> np.uint64(p * width)) & dmask] += 1
    src_k, src_o, dst_k, dst_o = keys, order, key2, order2
    for p in range(passes):
        shift = np.uint64(lo + p * width)
        if count[p, (src_k[0] >> shift) & dmask] == n:
            continue  # every key shares this digit
        total = 0
        for d in range(buckets):
            c = count[p, d]
            count[p, d] = total
            total += c
        for j in range(n):
            k = src_k[j]
            d = (k >> shift) & dmask
            pos = count[p, d]
            count[p, d] = pos + 1
            dst_k[pos] = k
            if carry:
                dst_o[pos] = src_o[j]
        src_k, dst_k = dst_k, src_k
        src_o, dst_o = dst_o, src_o
    return src_k, src_o


@nb.njit(cache=True, nogil=True)
def _sort_run(tk, tk2, count, m, pbits, order):
    """Sort the first ``m`` keys of ``tk`` (sort bits above a ``pbits``-bit position); returns the
    array holding them sorted."""
    if m <= _SHORT_RUN:
        for k in range(1, m):  # insertion sort
            v = tk[k]
            i = k - 1
            while i >= 0 and tk[i] > v:
                tk[i + 1] = tk[i]
                i -= 1
            tk[i + 1] = v
        return tk
    lo, hi = _window(tk, m, pbits)
    return _radix_sort(tk, tk2, order, order, count, m, pbits + lo, hi - lo, np.bool_(False))[0]


@nb.njit(cache=True, nogil=True)
def _group_pos(sk, so, r, packed, shift, pmask):
    """The value group and position of sorted entry ``r``: from the packed key, else the key and its order."""
    if packed:
        return sk[r] >> shift, np.int64(sk[r] & pmask)
    return sk[r], np.int64(so[r])


@nb.njit(cache=True, nogil=True)
def _emit(sk, so, packed, pbits, keys, pos, mapped, lo, d, a, b, c, tk, tk2, count, ranked, off):
    """Write ``ranked[off + rank] = pos[i]`` (the sample; i itself unless ``mapped``) from keys
    ``sk`` sorted by value, each entry an index i into ``keys``/``pos``: packed (the value, less
    its ``d`` lowest bits, above a ``pbits``-bit i), else full keys with their i in ``so``. Each
    run of one (packed) value is sorted by its ``d`` dropped bits (bits lo.. of ``keys[i]``),
    then by tie-breaker."""
    n = sk.shape[0]
    shift = np.uint64(pbits)
    pmask = np.uint64((1 << pbits) - 1)
    dmask = np.uint64((1 << d) - 1)
    s = np.int64(0)
    while s < n:
        g, i = _group_pos(sk, so, s, packed, shift, pmask)
        e = s + 1
        while e < n and _group_pos(sk, so, e, packed, shift, pmask)[0] == g:
            e += 1
        if e - s == 1:
            ranked[off + s] = pos[i] if mapped else i
        else:
            for k in range(e - s):
                i = _group_pos(sk, so, s + k, packed, shift, pmask)[1]
                low = (keys[i] >> np.uint64(lo)) & dmask if d else np.uint64(0)
                tb = _tie(pos[i] if mapped else i, a, b, c)
                tk[k] = (((low << np.uint64(31)) | np.uint64(tb)) << shift) | np.uint64(i)
            srt = _sort_run(tk, tk2, count, e - s, pbits, so)
            for k in range(e - s):
                i = np.int64(srt[k] & pmask)
                ranked[off + s + k] = pos[i] if mapped else i
        s = e


@nb.njit(cache=True, nogil=True)
def _pack(keys, pos, mapped, lo, vbits, tb_bits, pbits, a, b, c, pk):
    """``pk[i]`` = bits lo..lo+vbits of ``keys[i]``, then (``tb_bits`` = 31) the tie-breaker of
    sample ``pos[i]`` (i unless ``mapped``), then i."""
    vmask = np.uint64((1 << vbits) - 1)
    for i in range(keys.shape[0]):
        tb = np.uint64(_tie(pos[i] if mapped else i, a, b, c)) if tb_bits else np.uint64(0)
        pk[i] = (((((keys[i] >> np.uint64(lo)) & vmask) << np.uint64(tb_bits)) | tb) << np.uint64(pbits)
                 ) | np.uint64(i)


@nb.njit(cache=True, nogil=True)
def _rank_keys(keys, pos, mapped, a, b, c, ranked, off):
    """``ranked[off + rank] = pos[i]`` for value keys (m,) uint64 (ordered as the values, equal exactly
    for ties) of the samples ``pos`` (m,) (0..m-1 unless ``mapped``), ties ordered by the
    bijection (a, b, c).

    The keys' varying bits (all others shared) are packed with the index into one uint64,
    sorted, and each run of equal packed values sorted by the bits that did not fit
    (``d``), then tie-breaker. Where the value takes few bits (ties certain) the tie-breaker
    joins the packed key and one sort does all; where even the run keys would not fit
    (more than 2^16 samples of wide float64 values) the keys sort carrying their indices.
    """
    n = keys.shape[0]
    pbits = max(_bit_length(np.uint64(max(n - 1, 0))), 1)
    lo, hi = _window(keys, n, np.int64(0))  # (np.int64: no separate compile for a literal 0)
    w = hi - lo
    d = max(w + pbits - 64, 0)  # value bits that do not fit beside the index
    packed = d + 31 + pbits <= 64
    pk, tmp, tk, tk2 = np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n, np.uint64)
    count = np.empty((_MAX_PASSES, 1 << _DIGIT), np.int64)
    if packed:
        tb_bits = 31 if w <= pbits + 2 and w + 31 + pbits <= 64 else 0
        _pack(keys, pos, mapped, lo + d, w - d, tb_bits, pbits, a, b, c, pk)
        order, order2 = np.empty(0, np.int32), np.empty(0, np.int32)
        sk, so = _radix_sort(pk, tmp, order, order2, count, n, pbits, w - d + tb_bits, np.bool_(False))
    else:
        d = 0
        order, order2 = np.arange(n, dtype=np.int32), np.empty(n, np.int32)
        sk, so = _radix_sort(keys, tmp, order, order2, count, n, lo, w, np.bool_(True))
    _emit(sk, so, packed, pbits, keys, pos, mapped, lo, d, a, b, c, tk, tk2, count, ranked, off)


@nb.njit(cache=True, nogil=True)
def _min_count(keys):
    """The smallest of the uint64 ``keys`` and how many keys equal it."""
    kmin, cnt = keys[0], 0
    for k in keys:
        if k < kmin:
            kmin, cnt = k, 1
        elif k == kmin:
            cnt += 1
    return kmin, cnt


@nb.njit(cache=True, nogil=True)
def _rank_row(keys, a, b, c, ranked):
    """``ranked[rank] = sample`` for a row's value keys (n,) uint64, ties ordered by the bijection
    (a, b, c). A large tie at the row's minimum (ReLU zeros: an eighth of the samples or more)
    takes the first ranks, ordered by tie-breaker alone; the other samples rank after it."""
    n = keys.shape[0]
    kmin, cnt = _min_count(keys) if n else (np.uint64(0), 0)
    if cnt * 8 < n or cnt == n or n < 64:
        _rank_keys(keys, np.empty(0, np.int64), np.bool_(False), a, b, c, ranked, np.int64(0))
        return
    rest, pos = np.empty(n - cnt, np.uint64), np.empty(n - cnt, np.int64)
    tk, tk2 = np.empty(cnt, np.uint64), np.empty(cnt, np.uint64)
    pbits = _bit_length(np.uint64(n - 1))
    t, r = 0, 0
    for j in range(n):
        if keys[j] == kmin:
            tk[t] = (np.uint64(_tie(j, a, b, c)) << np.uint64(pbits)) | np.uint64(j)
            t += 1
        else:
            rest[r], pos[r] = keys[j], j
            r += 1
    count = np.empty((_MAX_PASSES, 1 << _DIGIT), np.int64)
    srt = _sort_run(tk, tk2, count, cnt, pbits, np.empty(0, np.int32))
    pmask = np.uint64((1 << pbits) - 1)
    for k in range(cnt):
        ranked[k] = srt[k] & pmask
    _rank_keys(rest, pos, np.bool_(True), a, b, c, ranked, np.int64(cnt))


@nb.njit(cache=True, nogil=True)
def _order_keys32(bits32, keys):
    """Fill ``keys`` (n,) uint64 with the unsigned order of each float32 bit pattern (-0.0 already 0.0)."""
    for j in range(bits32.shape[0]):
        v = np.int64(bits32[j])
        keys[j] = np.uint64((v ^ ((v >> 31) & np.int64(0x7FFFFFFF))) + (np.int64(1) << 31))


@nb.njit(cache=True, nogil=True)
def _order_keys64(ints, keys):
    """Fill ``keys`` (n,) uint64 with the unsigned order of each float64 bit pattern (-0.0 read as 0.0)."""
    neg_zero = np.int64(-0x8000000000000000)
    for j in range(ints.shape[0]):
        v = ints[j]
        if v == neg_zero:
            v = np.int64(0)
        keys[j] = np.uint64(v ^ ((v >> 63) & np.int64(0x7FFFFFFFFFFFFFFF))) ^ np.uint64(1 << 63)


@nb.njit(cache=True, nogil=True)
def _rank_one(bits32, ints, w, wide, keys64, seed, rid, ranked):
    """One row: ``ranked[rank] = sample`` (n,), ranked by its float64 values (``keys64``) or float32
    bits, its fingerprint from the float64 bits (``wide``) or the float32 bits."""
    acc = _acc_wide(ints, w) if wide else _acc_narrow(bits32, w)
    a, b, c = _tie_params(_mix(acc, seed, rid))
    keys = np.empty(ranked.shape[0], np.uint64)
    if keys64:
        _order_keys64(ints, keys)
    else:
        _order_keys32(bits32, keys)
    _rank_row(keys, a, b, c, ranked)


@nb.njit(parallel=True, cache=True)
def _copnorm_rows(bits32, ints, w, wide, keys64, seed, rids, scores, out):
    """Per row: out[row, j] = scores[rank of sample j] (scores 0..n-1 give the ranks)."""
    n = out.shape[1]
    for i in nb.prange(out.shape[0]):
        ranked = np.empty(n, np.int64)
        _rank_one(bits32[i], ints[i], w, wide, keys64, seed, rids[i], ranked)
        for r in range(n):
            out[i, ranked[r]] = scores[r]


def _inputs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """float32 bits (m, n) int32, the integers hashed (int64 view of float64 rows, else the bits), wide."""
    bits = (rows.astype(np.float32) + np.float32(0.0)).view(np.int32)
    if rows.dtype == np.float64:
        return bits, rows.view(np.int64), True
    return bits, bits, False


def _row_ids(ids: np.ndarray | None, m: int) -> np.ndarray:
    """The rows' ids (m,) as uint64 (the int64 bits); ``arange(m)`` when None."""
    ids = np.arange(m, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    return ids.view(np.uint64)


def _seed(seed: int) -> np.uint64:
    return np.uint64(int(seed) & (2**64 - 1))


def copnorm_rows(rows: np.ndarray, seed: int, scores: np.ndarray, out: np.ndarray, ids: np.ndarray | None = None
                 ) -> np.ndarray:
    """Copula values of rows (m, n) whose values float32 represents exactly, into ``out`` (m, n).

    ``ids`` (m,) int64 are the rows' ids (:mod:`.copula`); ``arange(m)`` when None.
    """
    bits, ints, wide = _inputs(rows)
    ints = ints if wide else np.empty((rows.shape[0], 0), np.int64)  # unused: hashed by the float32 bits
    match_numba_threads()
    _copnorm_rows(bits, ints, weights(rows.shape[1], wide), wide, False, _seed(seed), _row_ids(ids, rows.shape[0]),
                  scores, out)
    return out


def copnorm_rows64(rows: np.ndarray, seed: int, scores: np.ndarray, out: np.ndarray, ids: np.ndarray | None = None
                   ) -> np.ndarray:
    """Copula values of float64 rows (m, n) (any values), into ``out`` (m, n); ``ids`` as :func:`copnorm_rows`."""
    ints = np.ascontiguousarray(rows, dtype=np.float64).view(np.int64)
    match_numba_threads()
    bits = np.empty((rows.shape[0], 0), np.int32)  # unused: ranked and hashed by the float64 bits
    _copnorm_rows(bits, ints, weights(rows.shape[1], True), True, True, _seed(seed), _row_ids(ids, rows.shape[0]),
                  scores, out)
    return out


def rank_rows(rows: np.ndarray, seed: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Ranks (m, n) int64 of rows whose values float32 represents exactly (the 'scores' 0..n-1)."""
    return copnorm_rows(rows, seed, np.arange(rows.shape[1], dtype=np.int64), np.empty(rows.shape, np.int64), ids)


def rank_rows64(rows: np.ndarray, seed: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Ranks (m, n) int64 of float64 rows (any values)."""
    return copnorm_rows64(rows, seed, np.arange(rows.shape[1], dtype=np.int64), np.empty(rows.shape, np.int64), ids)


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
