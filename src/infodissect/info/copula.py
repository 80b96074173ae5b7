"""Copula normalisation: each variable's empirical CDF mapped through the inverse normal.

``copnorm(x)`` replaces each value by ``ndtri((rank + 1) / (n + 1))`` along the sample
axis. Ties (ReLU zeros, 8-bit pixels) are broken at random: tied samples get
distinct, randomly ordered ranks, from a seeded stream per variable that hashes the
seed, the sample and the variable's own values, so the result does not depend on
chunking or backend, and two variables tied on the same samples are broken
independently. A unit that is 90% zeros then carries, in its zeros, no information
about anything, so its MI with an unrelated factor is close to 0 rather than
inflated by the tie. Variables with a NaN come out all NaN, with a warning.

Ranking sorts once per variable: values exactly representable in float32 (all
activations and pixels) are sorted on a 64-bit key whose high bits order the value
and whose low 31 bits are the random tie-breaker; other variables sort by value and
only those with ties sort a second time. The keys are unique, so every correct sort
gives the same ranks: on the CPU a compiled radix sort per variable
(:mod:`.compiled`), elsewhere PyTorch's sort; NumPy and PyTorch inputs get
identical ranks.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .backend import Array, is_torch

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


def _fingerprints(ints: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded 64-bit hash (m, 1) of each row of :func:`_row_ints`: exact integer arithmetic
    (int32 products are summed exactly in int64), so it does not depend on which other
    rows share the array."""
    pos = torch.arange(ints.shape[1], device=ints.device, dtype=torch.int64)
    weights = (_splitmix64(pos + 1) | 1).to(ints.dtype)
    return _splitmix64((ints * weights).sum(1, keepdim=True, dtype=torch.int64) ^ int(seed))


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


def tie_breakers(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """A pseudo-random permutation of 0..2^31-1 applied to the sample positions, per row: (m, n).

    Each row gets its own bijection (an xor, odd multiplications and xor-shifts mod
    2^31, keyed by :func:`_fingerprints`), so tied samples are ordered at random,
    independently per variable, and no two samples of a row share a tie-breaker (the
    sort keys are unique, so the order is fully determined).
    """
    return _bijection(_fingerprints(_row_ints(rows), seed), rows.shape[1])


def _float32_keys(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """Unique int64 sort keys: the float32 value's order above the row's tie-breaker.

    The float32 bits serve both the order (signed order of ``b ^ ((b >> 31) & 0x7FFFFFFF)``
    is the float order) and, for non-float64 rows, the fingerprint.
    """
    b = _float32_bits(rows)
    key = (b ^ ((b >> 31) & 0x7FFFFFFF)).to(torch.int64) << 31
    return key.bitwise_or_(_bijection(_fingerprints(_row_ints(rows, b), seed), rows.shape[1]))


def _inverse(order: torch.Tensor) -> torch.Tensor:
    """Ranks from row-wise sort orders (m, n)."""
    pos = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def _rank_rows(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """Ranks along each row of ``rows`` (m, n), ties broken by :func:`tie_breakers`."""
    exact = _exact_rows(rows)
    if bool(exact.all()):
        return _inverse(torch.sort(_float32_keys(rows, seed), dim=1).indices)
    ranks = torch.empty(rows.shape, dtype=torch.int64, device=rows.device)
    idx = exact.nonzero().flatten()
    if idx.numel():
        ranks[idx] = _inverse(torch.sort(_float32_keys(rows[idx], seed), dim=1).indices)
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
            tb = torch.gather(tie_breakers(sub[t], seed), 1, order[t]).to(torch.int64)
            order[t] = torch.gather(order[t], 1, torch.sort((group << 31) | tb, dim=1).indices)  # unique keys
        ranks[idx] = _inverse(order)
    return ranks


def _rows(x: Array, axis: int = 0) -> tuple[torch.Tensor, int]:
    """``x`` as a contiguous torch tensor of rows (m, n), one per variable, and n.

    ``axis`` is the sample axis: 0 (``x`` is (n, ...)) or -1 (``x`` is (..., n)).
    """
    t = x if is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))
    if axis in (-1, t.ndim - 1):
        n = t.shape[-1]
        return t.reshape(-1, n).contiguous(), n
    n = t.shape[0]
    return t.reshape(n, -1).T.contiguous(), n


def _exact_rows(rows: torch.Tensor) -> torch.Tensor:
    """True per row whose values float32 represents exactly (NaN included)."""
    if rows.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int8, torch.int16):
        return torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    return ((rows.to(torch.float32).to(rows.dtype) == rows) | torch.isnan(rows)).all(1)


def _cpu_rows(rows: torch.Tensor) -> np.ndarray:
    """CPU rows as a NumPy array the compiled ranking takes: float64 as is, everything else float32."""
    return (rows if rows.dtype == torch.float64 else rows.to(torch.float32)).numpy()


def _rank_rows_any(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """:func:`_rank_rows`, by the compiled radix sort on the CPU (same ranks)."""
    if rows.device.type != "cpu" or rows.shape[1] == 0:
        return _rank_rows(rows, seed)
    from . import compiled

    exact = _exact_rows(rows)
    if bool(exact.all()):
        return torch.from_numpy(compiled.rank_rows(_cpu_rows(rows), seed))
    out = _rank_rows(rows, seed)  # rows with float64-only values need the two-stage sort
    idx = exact.nonzero().flatten()
    if idx.numel():
        out[idx] = torch.from_numpy(compiled.rank_rows(_cpu_rows(rows[idx]), seed))
    return out


def ranks(x: Array, seed: int = 0) -> Array:
    """Ranks 0..n-1 along the first axis of ``x`` (n, ...), ties broken at random (seeded)."""
    rows, n = _rows(x)
    r = _rank_rows_any(rows, seed).T.reshape(x.shape)
    return r if is_torch(x) else np.ascontiguousarray(r.numpy())


def normal_scores(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """``ndtri((r + 1) / (n + 1))`` for r = 0..n-1 (the copula value of each rank)."""
    return torch.special.ndtri((torch.arange(n, dtype=torch.float64, device=device) + 1.0) / (n + 1.0)).to(dtype)


def _copnorm_cpu(rows: torch.Tensor, n: int, seed: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Copula values of CPU rows by the compiled radix ranking, or None if a row needs the float64 sort."""
    from . import compiled

    if dtype not in (torch.float32, torch.float64) or not bool(_exact_rows(rows).all()):
        return None
    out = torch.empty(rows.shape, dtype=dtype)
    compiled.copnorm_rows(_cpu_rows(rows), seed, normal_scores(n, dtype).numpy(), out.numpy())
    return out


def copnorm(x: Array, seed: int = 0, axis: int = 0, dtype: torch.dtype | None = None) -> Array:
    """Copula-normalise ``x`` along its sample axis: ``ndtri((rank + 1) / (n + 1))``.

    ``axis`` is 0 (``x`` is (n, ...), the kernels' layout) or -1 (``x`` is (..., n),
    which avoids a transposing copy). Floating inputs keep their dtype; others (e.g.
    uint8 pixels) become float64; ``dtype`` (a torch dtype) overrides the output's.
    """
    rows, n = _rows(x, axis)
    dtype = dtype or (rows.dtype if rows.dtype.is_floating_point else torch.float64)
    out = _copnorm_cpu(rows, n, seed, dtype) if rows.device.type == "cpu" and n else None
    if out is None:
        out = normal_scores(n, dtype, rows.device)[_rank_rows_any(rows, seed)]
    bad = torch.isnan(rows).any(1) if rows.dtype.is_floating_point else None
    if bad is not None and bool(bad.any()):
        warnings.warn(f"copnorm: {int(bad.sum())} variable(s) contain NaN; their result is NaN", RuntimeWarning,
                      stacklevel=2)
        out[bad] = float("nan")
    out = out.reshape(x.shape) if axis in (-1, x.ndim - 1) else out.T.reshape(x.shape)
    if is_torch(x):
        return out.contiguous()
    return np.ascontiguousarray(out.numpy())


__all__ = ["copnorm", "ranks", "normal_scores", "tie_breakers"]
