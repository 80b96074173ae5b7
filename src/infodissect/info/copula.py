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
only those with ties sort a second time. Sorting runs in PyTorch for both backends
(multi-threaded on CPU), so NumPy and PyTorch inputs get identical ranks.
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


def _fingerprints(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded 64-bit hash (m, 1) of each row's values: exact integer arithmetic, so it
    does not depend on which other rows share the array. Rows exactly representable in
    float32 hash their float32 bits (int32 products, summed exactly in int64)."""
    pos = torch.arange(rows.shape[1], device=rows.device, dtype=torch.int64)
    weights = _splitmix64(pos + 1) | 1
    if rows.dtype == torch.float64:
        mixed = (rows.view(torch.int64) * weights).sum(1, keepdim=True)
    else:
        bits = (rows.to(torch.float32) + 0.0).view(torch.int32)
        mixed = (bits * weights.to(torch.int32)).sum(1, keepdim=True, dtype=torch.int64)
    return _splitmix64(mixed ^ int(seed))


def tie_breakers(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """A pseudo-random permutation of 0..2^31-1 applied to the sample positions, per row: (m, n).

    Each row gets its own bijection (an xor, odd multiplications and xor-shifts mod
    2^31, keyed by :func:`_fingerprints`), so tied samples are ordered at random,
    independently per variable, and no two samples of a row share a tie-breaker (the
    sort keys are unique, so the order is fully determined).
    """
    mask = (1 << 31) - 1
    h = _fingerprints(rows, seed)
    a, b = ((h & mask) | 1).to(torch.int32), ((_shr(h, 31) & mask) | 1).to(torch.int32)
    c = (_shr(h, 33) & mask).to(torch.int32)
    z = torch.arange(rows.shape[1], device=rows.device, dtype=torch.int32) ^ c  # int32 arithmetic wraps mod 2^32
    z = (z * a) & mask
    z ^= z >> 16
    z = (z * b) & mask
    z ^= z >> 15
    return z


def _ordered_float32(rows: torch.Tensor) -> torch.Tensor:
    """An int32 per value whose signed order is that of the float32 values (-0.0 == 0.0)."""
    b = (rows.to(torch.float32) + 0.0).view(torch.int32)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


def _float32_keys(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """Unique int64 sort keys: the float32 value's order above the row's tie-breaker."""
    key = _ordered_float32(rows).to(torch.int64) << 31
    return key.bitwise_or_(tie_breakers(rows, seed))


def _inverse(order: torch.Tensor) -> torch.Tensor:
    """Ranks from row-wise sort orders (m, n)."""
    pos = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def _rank_rows(rows: torch.Tensor, seed: int) -> torch.Tensor:
    """Ranks along each row of ``rows`` (m, n), ties broken by :func:`tie_breakers`."""
    if rows.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.int8, torch.int16):
        exact = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    else:
        exact = ((rows.to(torch.float32).to(rows.dtype) == rows) | torch.isnan(rows)).all(1)
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


def ranks(x: Array, seed: int = 0) -> Array:
    """Ranks 0..n-1 along the first axis of ``x`` (n, ...), ties broken at random (seeded)."""
    rows, n = _rows(x)
    r = _rank_rows(rows, seed).T.reshape(x.shape)
    return r if is_torch(x) else np.ascontiguousarray(r.numpy())


def normal_scores(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """``ndtri((r + 1) / (n + 1))`` for r = 0..n-1 (the copula value of each rank)."""
    return torch.special.ndtri((torch.arange(n, dtype=torch.float64, device=device) + 1.0) / (n + 1.0)).to(dtype)


def copnorm(x: Array, seed: int = 0, axis: int = 0, dtype: torch.dtype | None = None) -> Array:
    """Copula-normalise ``x`` along its sample axis: ``ndtri((rank + 1) / (n + 1))``.

    ``axis`` is 0 (``x`` is (n, ...), the kernels' layout) or -1 (``x`` is (..., n),
    which avoids a transposing copy). Floating inputs keep their dtype; others (e.g.
    uint8 pixels) become float64; ``dtype`` (a torch dtype) overrides the output's.
    """
    rows, n = _rows(x, axis)
    dtype = dtype or (rows.dtype if rows.dtype.is_floating_point else torch.float64)
    out = normal_scores(n, dtype, rows.device)[_rank_rows(rows, seed)]
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
