"""Copula normalisation: each variable's empirical CDF mapped through the inverse normal.

``copnorm(x)`` replaces each value by ``ndtri((rank + 1) / (n + 1))`` along the sample
axis (``copnorm_cat`` does so within each category of a label). Ties (ReLU zeros,
8-bit pixels) are broken at random: tied samples get distinct, randomly ordered
ranks. Each variable's order of ties is a bijection of its sample positions keyed by
a hash of the seed, the variable's values and the variable's **id**: an int64 per
variable (``ids``), by default its position among the variables of ``x`` (flattened
in C order, the sample axis left out). The hash is
``splitmix64(sum_j bits_j * w_j ^ seed ^ splitmix64(id + 0x9E3779B97F4A7C15))``, so
two variables with identical values but different ids (two dead units, two constant
pixels) are broken independently, and a variable gets the same ranks whether it is
ranked alone or in a block, on either backend, as long as the caller gives it the
same id (pass each variable's global position when ranking a chunk). A unit that is
90% zeros then carries, in its zeros, no information about anything, so its MI with
an unrelated factor is close to 0 rather than inflated by the tie. Variables with a
NaN come out all NaN, with a warning.

Ranking sorts by value, ties by the tie-breaker. Variables whose values float32
represents exactly (activations, pixels) sort once on a unique 64-bit key whose high
bits order the value and whose low 31 bits are the tie-breaker; others sort by value
and then each run of tied values by tie-breaker. The result does not depend on the
sort: on the CPU compiled radix sorts per variable (:mod:`.compiled`, float32 keys and
float64 values alike), elsewhere PyTorch's sort; NumPy and PyTorch inputs get
identical ranks.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .backend import Array, is_torch, to_numpy

_M1 = -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9 as int64
_M2 = -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB as int64
_GOLDEN = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15 as int64


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (as if unsigned)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (wrapping arithmetic)."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _float32_bits(rows: torch.Tensor) -> torch.Tensor:
    """The int32 bit pattern of each value as float32 (-0.0 read as 0.0)."""
    return (rows.to(torch.float32) + 0.0).view(torch.int32)


def _row_ints(rows: torch.Tensor, bits32: torch.Tensor | None = None) -> torch.Tensor:
    """The integers a row's fingerprint hashes: float64 bits of float64 rows, else float32 bits."""
    if rows.dtype == torch.float64:
        return rows.view(torch.int64)
    return _float32_bits(rows) if bits32 is None else bits32


def _fingerprints(ints: torch.Tensor, seed: int, ids: torch.Tensor) -> torch.Tensor:
    """A seeded 64-bit hash (m, 1) of each row of :func:`_row_ints` and its id (``ids`` (m,) int64):
    exact integer arithmetic (int32 products are summed exactly in int64), so it does not
    depend on which other rows share the array."""
    pos = torch.arange(ints.shape[1], device=ints.device, dtype=torch.int64)
    weights = (_splitmix64(pos + 1) | 1).to(ints.dtype)
    acc = (ints * weights).sum(1, keepdim=True, dtype=torch.int64)
    return _splitmix64(acc ^ int(seed) ^ _splitmix64(ids.reshape(-1, 1) + _GOLDEN))


def _bijection(h: torch.Tensor, n: int) -> torch.Tensor:
    """Per row, the bijection of 0..2^31-1 keyed by the fingerprint ``h`` (m, 1), applied to 0..n-1."""
    mask = (1 << 31) - 1
    a, b = ((h & mask) | 1).to(torch.int32), ((_shr(h, 31) & mask) | 1).to(torch.int32)
    c = (_shr(h, 33) & mask).to(torch.int32)
    z = torch.arange(n, device=h.device, dtype=torch.int32) ^ c  # int32 arithmetic wraps mod 2^32
    z = (z * a) & mask
    z ^= z >> 16
    z = (z * b) & mask
    z ^= z >> 15
    return z


def _id_tensor(ids: Array | None, m: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The rows' ids (m,) int64 on ``device``: ``arange(m)`` when None; raises unless one per row."""
    if ids is None:
        return torch.arange(m, dtype=torch.int64, device=device)
    t = (ids if is_torch(ids) else torch.as_tensor(np.asarray(ids))).reshape(-1)
    if t.numel() != m:
        raise ValueError(f"ids has {t.numel()} entries; x has {m} variables (one id per variable)")
    if m and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise ValueError(f"ids must be integers, not {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def tie_breakers(rows: torch.Tensor, seed: int, ids: Array | None = None) -> torch.Tensor:
    """A pseudo-random permutation of 0..2^31-1 applied to the sample positions, per row: (m, n).

    Each row gets its own bijection (an xor, odd multiplications and xor-shifts mod
    2^31, keyed by :func:`_fingerprints` of the row's values, the seed and its id,
    ``ids`` (m,), ``arange(m)`` when None), so tied samples are ordered at random,
    independently per variable, and no two samples of a row share a tie-breaker (the
    sort keys are unique, so the order is fully determined).
    """
    ids = _id_tensor(ids, rows.shape[0], rows.device)
    return _bijection(_fingerprints(_row_ints(rows), seed, ids), rows.shape[1])


def _float32_keys(rows: torch.Tensor, seed: int, ids: torch.Tensor) -> torch.Tensor:
    """Unique int64 sort keys: the float32 value's order above the row's tie-breaker.

    The float32 bits serve both the order (signed order of ``b ^ ((b >> 31) & 0x7FFFFFFF)``
    is the float order) and, for non-float64 rows, the fingerprint.
    """
    b = _float32_bits(rows)
    key = (b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64) << 31
    return key.bitwise_or_(_bijection(_fingerprints(_row_ints(rows, b), seed, ids), rows.shape[1]))


def _inverse(order: torch.Tensor) -> torch.Tensor:
    """Ranks from row-wise sort orders (m, n)."""
    pos = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def _rank_rows(rows: torch.Tensor, seed: int, ids: Array | None = None) -> torch.Tensor:
    """Ranks along each row of ``rows`` (m, n), ties broken by :func:`tie_breakers` (PyTorch's sort)."""
    ids = _id_tensor(ids, rows.shape[0], rows.device)
    exact = _exact_rows(rows)
    if bool(exact.all()):
        return _inverse(torch.sort(_float32_keys(rows, seed, ids), dim=1).indices)
    ranks = torch.empty(rows.shape, dtype=torch.int64, device=rows.device)
    idx = exact.nonzero().flatten()
    if idx.numel():
        ranks[idx] = _inverse(torch.sort(_float32_keys(rows[idx], seed, ids[idx]), dim=1).indices)
    idx = (~exact).nonzero().flatten()
    if idx.numel():
        sub = rows[idx].to(torch.float64)
        order = torch.sort(sub, dim=1).indices
        s = torch.gather(sub, 1, order)
        same = s[:, 1:] == s[:, :-1]
        tied = same.any(1)
        if tied.any():
            t = tied.nonzero().flatten()
            group = torch.cat([torch.zeros_like(same[t, :1], dtype=torch.int64), torch.cumsum(~same[t], 1)], 1)
            # Sorted positions, keyed by value group then by their sample's tie-breaker.
            tb = torch.gather(tie_breakers(sub[t], seed, ids[idx][t]), 1, order[t]).to(torch.int64)
            order[t] = torch.gather(order[t], 1, torch.sort((group << 31) | tb, dim=1).indices)  # unique keys
        ranks[idx] = _inverse(order)
    return ranks


def _tensor(x: Array) -> torch.Tensor:
    """``x`` as a torch tensor sharing its memory where torch can (any positive strides: a transposed
    view stays a view, so the one copy into rows is PyTorch's, faster than NumPy's for a transpose)."""
    if is_torch(x):
        return x
    a = np.asarray(x)
    if (a.ndim == 0 or not a.dtype.isnative or not a.flags.writeable
            or any(s <= 0 or s % a.itemsize for s in a.strides)):
        a = np.ascontiguousarray(a)
    return torch.from_numpy(a)


def _rows(x: Array, axis: int = 0) -> tuple[torch.Tensor, int]:
    """``x`` as a contiguous torch tensor of rows (m, n), one per variable, and n.

    ``axis`` is the sample axis: 0 (``x`` is (n, ...)) or -1 (``x`` is (..., n)).
    """
    t = _tensor(x)
    if axis in (-1, t.ndim - 1):
        n = t.shape[-1]
        return t.reshape(math.prod(t.shape[:-1]), n).contiguous(), n
    n = t.shape[0]
    return t.reshape(n, math.prod(t.shape[1:])).T.contiguous(), n


def _exact_rows(rows: torch.Tensor) -> torch.Tensor:
    """True per row whose values float32 represents exactly (NaN included)."""
    if rows.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int8, torch.int16):
        return torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    return ((rows.to(torch.float32).to(rows.dtype) == rows) | torch.isnan(rows)).all(1)


def _cpu_rows(rows: torch.Tensor) -> np.ndarray:
    """CPU rows as a NumPy array the compiled ranking takes: float64 as is, everything else float32."""
    return (rows if rows.dtype == torch.float64 else rows.to(torch.float32)).numpy()


def _compiled_scores(rows: torch.Tensor, seed: int, ids: torch.Tensor, scores: np.ndarray, out: np.ndarray
                     ) -> np.ndarray:
    """``out[i, j] = scores[rank of sample j in row i]`` for CPU rows (m, n), by the compiled radix
    sorts (:mod:`.compiled`; the same ranks as :func:`_rank_rows`)."""
    from . import compiled

    if rows.dtype == torch.float64:  # float32-exact or not, sorting by value then tie-breaker gives the same ranks
        return compiled.copnorm_rows64(rows.numpy(), seed, scores, out, ids.numpy())
    exact = _exact_rows(rows)
    if bool(exact.all()):
        return compiled.copnorm_rows(_cpu_rows(rows), seed, scores, out, ids.numpy())
    for sel, wide in ((exact, False), (~exact, True)):  # integers float32 cannot hold rank as float64
        idx = sel.nonzero().flatten()
        if idx.numel():
            sub, part = rows[idx], np.empty((idx.numel(), rows.shape[1]), out.dtype)
            fn = compiled.copnorm_rows64 if wide else compiled.copnorm_rows
            out[idx.numpy()] = fn(sub.to(torch.float64).numpy() if wide else _cpu_rows(sub), seed, scores, part,
                                  ids[idx].numpy())
    return out


def _rank_rows_any(rows: torch.Tensor, seed: int, ids: Array | None = None) -> torch.Tensor:
    """:func:`_rank_rows`, by the compiled radix sorts on the CPU (same ranks)."""
    if rows.device.type != "cpu" or rows.shape[1] == 0:
        return _rank_rows(rows, seed, ids)
    n = rows.shape[1]
    out = np.empty(rows.shape, np.int64)
    return torch.from_numpy(_compiled_scores(rows, seed, _id_tensor(ids, rows.shape[0]), np.arange(n), out))


def ranks(x: Array, seed: int = 0, ids: Array | None = None) -> Array:
    """Ranks 0..n-1 along the first axis of ``x`` (n, ...), ties broken at random (seeded; ``ids``,
    one int64 per variable in C order, key each variable's tie order: see the module docstring)."""
    rows, n = _rows(x)
    r = _rank_rows_any(rows, seed, ids).T.reshape(x.shape)
    return r if is_torch(x) else np.ascontiguousarray(r.numpy())


def normal_scores(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """``ndtri((r + 1) / (n + 1))`` for r = 0..n-1 (the copula value of each rank)."""
    return torch.special.ndtri((torch.arange(n, dtype=torch.float64, device=device) + 1.0) / (n + 1.0)).to(dtype)


def _copnorm_cpu(rows: torch.Tensor, n: int, seed: int, dtype: torch.dtype, ids: Array | None = None
                 ) -> torch.Tensor | None:
    """Copula values of CPU rows by the compiled radix ranking, or None for an output dtype it does not write."""
    if dtype not in (torch.float32, torch.float64):
        return None
    out = torch.empty(rows.shape, dtype=dtype)
    _compiled_scores(rows, seed, _id_tensor(ids, rows.shape[0]), normal_scores(n, dtype).numpy(), out.numpy())
    return out


def _copnorm_rows(rows: torch.Tensor, seed: int, dtype: torch.dtype, ids: torch.Tensor) -> torch.Tensor:
    """Copula values (m, n) of rows (m, n) in ``dtype``, NaN rows not yet set to NaN."""
    n = rows.shape[1]
    out = _copnorm_cpu(rows, n, seed, dtype, ids) if rows.device.type == "cpu" and n else None
    if out is None:
        out = normal_scores(n, dtype, rows.device)[_rank_rows_any(rows, seed, ids)]
    return out


def _out_dtype(rows: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """``dtype``, else the rows' own floating dtype, else float64."""
    return dtype or (rows.dtype if rows.dtype.is_floating_point else torch.float64)


def _finish(out: torch.Tensor, rows: torch.Tensor, x: Array, axis: int, name: str) -> Array:
    """Rows with a NaN set to NaN (with a warning), and ``out`` (m, n) back in ``x``'s shape and library."""
    bad = torch.isnan(rows).any(1) if rows.dtype.is_floating_point else None
    if bad is not None and bool(bad.any()):
        warnings.warn(f"{name}: {int(bad.sum())} variable(s) contain NaN; their result is NaN", RuntimeWarning,
                      stacklevel=3)
        out[bad] = float("nan")
    out = (out.reshape(x.shape) if axis in (-1, x.ndim - 1) else out.T.reshape(x.shape)).contiguous()
    return out if is_torch(x) else out.numpy()


def copnorm(x: Array, seed: int = 0, axis: int = 0, dtype: torch.dtype | None = None, ids: Array | None = None
            ) -> Array:
    """Copula-normalise ``x`` along its sample axis: ``ndtri((rank + 1) / (n + 1))``.

    ``axis`` is 0 (``x`` is (n, ...), the kernels' layout) or -1 (``x`` is (..., n),
    which avoids a transposing copy). Floating inputs keep their dtype; others (e.g.
    uint8 pixels) become float64; ``dtype`` (a torch dtype) overrides the output's.
    ``ids`` (int64, one per variable in C order of the non-sample axes; default their
    positions) key each variable's random order of ties: see the module docstring.
    """
    rows, n = _rows(x, axis)
    ids_t = _id_tensor(ids, rows.shape[0], rows.device)
    return _finish(_copnorm_rows(rows, seed, _out_dtype(rows, dtype), ids_t), rows, x, axis, "copnorm")


def _label_codes(labels: Array, n: int) -> np.ndarray:
    """Category codes 0..k-1 (n,) of ``labels``; raises unless it is 1-D with n entries."""
    lab = to_numpy(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one entry per sample: labels has shape {lab.shape} "
                         f"({lab.size} entries), x has {n} samples")
    return np.unique(lab, return_inverse=True)[1].reshape(-1)


def copnorm_cat(x: Array, labels: Array, seed: int = 0, axis: int = 0, dtype: torch.dtype | None = None,
                ids: Array | None = None) -> Array:
    """Copula-normalise ``x`` within each category of ``labels`` (frites' ``copnorm_cat_nd``).

    The samples of each category (``labels`` (n,), any values) are ranked among
    themselves and mapped through ``ndtri((rank + 1) / (n_c + 1))``, n_c the category's
    size; ties are broken as by :func:`copnorm` (same ``seed`` and ``ids``, the hash
    taken over the category's values). ``axis`` and ``dtype`` as :func:`copnorm`.
    """
    rows, n = _rows(x, axis)
    codes = _label_codes(labels, n)
    ids_t = _id_tensor(ids, rows.shape[0], rows.device)
    dtype = _out_dtype(rows, dtype)
    out = torch.empty(rows.shape, dtype=dtype, device=rows.device)
    order = np.argsort(codes, kind="stable")
    for idx in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        if not idx.size:
            continue
        sel = torch.as_tensor(idx, device=rows.device)
        out[:, sel] = _copnorm_rows(rows[:, sel].contiguous(), seed, dtype, ids_t)
    return _finish(out, rows, x, axis, "copnorm_cat")


__all__ = ["copnorm", "copnorm_cat", "ranks", "normal_scores", "tie_breakers"]
