"""Copula normalisation: each variable's empirical CDF mapped through the inverse normal.

Ties (ReLU zeros, 8-bit pixels) are broken at random: tied samples get distinct,
randomly ordered ranks, from a seeded stream per variable that hashes the seed, the
sample and the variable's values (:func:`backend.column_uniforms`), so the result
does not depend on chunking or backend, and two variables tied on the same samples
are broken independently. A unit that is 90% zeros then carries, in its zeros, no
information about anything, so its MI with an unrelated factor is close to 0 rather
than inflated by the tie. Variables with a NaN come out all NaN, with a warning.
"""

from __future__ import annotations

import warnings

import numpy as np

from .backend import (Array, argsort, as_index, column_uniforms, inverse_permutation, namespace, ndtri, take, take_along,
                      to_numpy)


def ranks(x: Array, seed: int = 0) -> Array:
    """Ranks 0..n-1 along the first axis of ``x`` (n, m), ties broken at random (seeded)."""
    xp = namespace(x)
    order = argsort(x, 0)
    r = inverse_permutation(order)
    s = take_along(x, order, 0)
    same = s[1:, :] == s[:-1, :]
    tied = np.flatnonzero(to_numpy(xp.any(same, axis=0)))
    if tied.size == 0:
        return r
    # Group number of each sample's value (0, 1, ... in sorted order) plus a uniform:
    # sorting that key orders distinct values as before and tied samples at random.
    starts = xp.astype(~take(same, tied, 1), xp.float64)
    group_sorted = xp.cumsum(xp.concat([xp.zeros_like(starts[:1, :]), starts], axis=0), axis=0)
    group = take_along(group_sorted, take(r, tied, 1), 0)
    key = group + xp.astype(column_uniforms(take(x, tied, 1), seed), xp.float64)
    r[:, as_index(tied, r)] = inverse_permutation(argsort(key, 0))
    return r


def copnorm(x: Array, seed: int = 0) -> Array:
    """Copula-normalise ``x`` (n, ...) along its first (sample) axis: ``ndtri((rank + 1) / (n + 1))``.

    Floating inputs keep their dtype; others (e.g. uint8 pixels) become float64.
    """
    xp = namespace(x)
    n = x.shape[0]
    flat = xp.reshape(x, (n, -1))
    if not xp.isdtype(flat.dtype, "real floating"):
        flat = xp.astype(flat, xp.float64)
    out = ndtri((xp.astype(ranks(flat, seed), flat.dtype) + 1.0) / (n + 1.0))
    bad = np.flatnonzero(to_numpy(xp.any(xp.isnan(flat), axis=0)))
    if bad.size:
        warnings.warn(f"copnorm: {bad.size} variable(s) contain NaN; their result is NaN", RuntimeWarning,
                      stacklevel=2)
        out[:, as_index(bad, out)] = float("nan")
    return xp.reshape(out, x.shape)
