"""Permutation statistics with family-wise error control by the maximum statistic.

One set of permutations of the samples (seeded) is shared by every variable: for each
permutation the largest MI over all variables is recorded, and a variable is
significant when its MI exceeds the ``1 - alpha`` quantile of that null distribution
of maxima, which controls the family-wise error rate across all variables. Permuting
the (already copula-normalised) factor leaves the variables' copula transform valid,
so the null costs matrix products (continuous factors) or class sums (discrete
factors), never a re-ranking.
"""

from __future__ import annotations

import numpy as np

from .backend import Array, namespace, take, to_numpy
from .estimators import _demean, mi_from_correlation, mi_model_gd

_PERM_BLOCK = 256  # permutations per matrix product


def permutations(n: int, n_perm: int, seed: int = 0) -> np.ndarray:
    """(n_perm, n) seeded permutations of ``n`` samples, the same for every variable and chunk."""
    rng = np.random.default_rng([seed, 0x9E37])
    return np.stack([rng.permutation(n) for _ in range(n_perm)]) if n_perm else np.zeros((0, n), np.int64)


def null_max_gg(x: Array, y: Array, perms: np.ndarray, biascorrect: bool = True) -> Array:
    """Largest MI over the columns of ``x`` (n, P) with each permuted column of ``y`` (n, Q): (n_perm, Q)."""
    xp = namespace(x, y)
    n = x.shape[0]
    xc, yc = _demean(x), _demean(y)
    xs = xc / xp.sqrt(xp.sum(xc * xc, axis=0, keepdims=True))
    ys = yc / xp.sqrt(xp.sum(yc * yc, axis=0, keepdims=True))
    xs = xp.where(xp.isfinite(xs), xs, xp.zeros_like(xs))  # an undefined variable never sets the maximum
    out = []
    for lo in range(0, perms.shape[0], _PERM_BLOCK):
        block = perms[lo:lo + _PERM_BLOCK]
        yp = take(ys, block.reshape(-1), 0)  # (b*n, Q)
        yp = xp.reshape(xp.permute_dims(xp.reshape(yp, (block.shape[0], n, -1)), (1, 0, 2)), (n, -1))
        r = xp.max(xp.abs(xp.matrix_transpose(xs) @ yp), axis=0)  # max |r| over variables: (b*Q,)
        out.append(xp.reshape(mi_from_correlation(r, n, biascorrect), (block.shape[0], -1)))
    return xp.concat(out, axis=0) if out else xp.zeros((0, y.shape[1]), dtype=x.dtype)


def null_max_gd(x: Array, labels: np.ndarray, perms: np.ndarray, biascorrect: bool = True) -> Array:
    """Largest MI over the variables of ``x`` (n, P[, d]) with each permutation of ``labels``: (n_perm,)."""
    xp = namespace(x)
    labels = np.asarray(to_numpy(labels))
    vals = []
    for perm in perms:
        mi = mi_model_gd(x, labels[perm], biascorrect)
        vals.append(xp.max(xp.where(xp.isnan(mi), xp.full_like(mi, -np.inf), mi)))
    return xp.stack(vals) if vals else xp.zeros((0,), dtype=x.dtype)


def threshold(null_max: Array, alpha: float = 0.05) -> Array:
    """The ``1 - alpha`` quantile of the null maxima (n_perm, ...) along the first axis."""
    return np.quantile(to_numpy(null_max), 1.0 - alpha, axis=0, method="higher")


def pvalues(mi: np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """Family-wise corrected p-values ``(1 + #{null max >= mi}) / (1 + n_perm)``.

    ``mi`` (..., Q) against ``null_max`` (n_perm, Q); or ``mi`` (...) against (n_perm,).
    """
    mi = np.asarray(mi, dtype=np.float64)
    null = np.sort(np.asarray(null_max, dtype=np.float64).reshape(null_max.shape[0], -1), axis=0)
    flat = mi.reshape(-1, null.shape[1])
    exceed = np.stack([null.shape[0] - np.searchsorted(null[:, q], flat[:, q], side="left")
                       for q in range(null.shape[1])], 1)
    p = (1.0 + exceed) / (1.0 + null.shape[0])
    return np.where(np.isnan(flat), np.nan, p).reshape(mi.shape)


__all__ = ["permutations", "null_max_gg", "null_max_gd", "threshold", "pvalues"]
