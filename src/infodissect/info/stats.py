"""Permutation statistics with family-wise error control by the maximum statistic.

One set of permutations of the samples (seeded) is shared by every variable: for each
permutation the largest MI over all variables is recorded, and a variable is
significant when its MI exceeds the ``1 - alpha`` quantile of that null distribution
of maxima, which controls the family-wise error rate across all variables. Permuting
the (already copula-normalised) factor leaves the variables' copula transform valid,
so the null costs matrix products (continuous factors) or class sums (discrete
factors), never a re-ranking. The null's sums run in float32 (its maxima are
quantiles; their last digits do not matter), the observed MI in the input's precision.
"""

from __future__ import annotations

import numpy as np
import torch

from .backend import Array, is_torch, namespace, take, to_numpy
from .estimators import LN2, _dterm, _psi_sum, encode_labels, mi_from_r2, standardize

_PERM_BLOCK = 256  # permutations per matrix product


def permutations(n: int, n_perm: int, seed: int = 0) -> np.ndarray:
    """(n_perm, n) seeded permutations of ``n`` samples, the same for every variable and chunk."""
    rng = np.random.default_rng([seed, 0x9E37])
    return np.stack([rng.permutation(n) for _ in range(n_perm)]) if n_perm else np.zeros((0, n), np.int64)


def null_max_gg(x: Array, y: Array, perms: np.ndarray, biascorrect: bool = True) -> Array:
    """Largest MI over the variables of ``x`` with each permuted column of ``y`` (n, Q): (n_perm, Q).

    ``x`` is (n, P) (univariate variables) or (n, P, d) (d-variate ones, e.g. a vertex's
    3-D displacement). Each variable is whitened once (its d columns made orthonormal),
    so that for every permutation its squared multiple correlation with y is the sum
    of d squared dot products: one matrix product for all variables and permutations.
    """
    xp = namespace(x, y)
    n, d = x.shape[0], (x.shape[2] if x.ndim == 3 else 1)
    ws = _whiten(x) if d > 1 else standardize(x)
    ws = xp.where(xp.isfinite(ws), ws, xp.zeros_like(ws))  # an undefined variable never sets the maximum
    ws, ys = xp.astype(ws, xp.float32), xp.astype(standardize(y), xp.float32)  # the null needs no more precision
    out = []
    for lo in range(0, perms.shape[0], _PERM_BLOCK):
        block = perms[lo:lo + _PERM_BLOCK]
        yp = take(ys, block.reshape(-1), 0)  # (b*n, Q)
        yp = xp.reshape(xp.permute_dims(xp.reshape(yp, (block.shape[0], n, -1)), (1, 0, 2)), (n, -1))
        r = xp.matrix_transpose(ws) @ yp  # (P*d, b*Q)
        r2 = xp.max(xp.sum(xp.reshape(r * r, (-1, d, r.shape[1])), axis=1), axis=0)  # max R^2 over variables
        out.append(xp.reshape(mi_from_r2(xp.astype(r2, x.dtype), n, d, biascorrect), (block.shape[0], -1)))
    return xp.concat(out, axis=0) if out else xp.zeros((0, y.shape[1]), dtype=x.dtype)


def _whiten(x: Array) -> Array:
    """(n, P, d) -> (n, P*d): each variable demeaned and its d columns made orthonormal (Cholesky of its Gram).

    A rank-deficient variable (constant, or collinear columns) comes out as NaN.
    """
    xt = x if is_torch(x) else torch.from_numpy(np.asarray(x))
    xc = (xt - xt.mean(0, keepdim=True)).to(torch.float64)
    gram = torch.einsum("npd,npe->pde", xc, xc)
    chol, info = torch.linalg.cholesky_ex(gram)
    eye = torch.eye(x.shape[2], dtype=gram.dtype, device=gram.device)
    chol = torch.where((info == 0)[:, None, None], chol, eye)
    w = torch.linalg.solve_triangular(chol, xc.permute(1, 2, 0), upper=False)  # (P, d, n) = L^-1 x^T
    w = torch.where((info == 0)[:, None, None], w, torch.full_like(w, float("nan")))
    w = w.permute(2, 0, 1).reshape(x.shape[0], -1).to(xt.dtype)
    return w if is_torch(x) else w.numpy()


def null_max_gd(x: Array, labels: np.ndarray, perms: np.ndarray, biascorrect: bool = True) -> Array:
    """Largest MI over the univariate variables of ``x`` (n, P) with each permutation of ``labels``: (n_perm,).

    Classes with fewer than 2 samples are left out (as the observed MI leaves them out).
    """
    codes, values = encode_labels(labels)
    counts = np.bincount(codes, minlength=len(values))
    if (counts < 2).any():
        keep = counts[codes] >= 2
        return null_max_gd(take(x, np.flatnonzero(keep), 0), codes[keep], _restrict(perms, keep), biascorrect)
    xt = x if is_torch(x) else torch.from_numpy(np.asarray(x))
    out = [torch.nan_to_num(model_gd_under_permutations(xt, codes, perms[lo:lo + _GD_BLOCK], biascorrect),
                            nan=-np.inf).amax(0) for lo in range(0, perms.shape[0], _GD_BLOCK)]
    res = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
    return res if is_torch(x) else res.numpy()


_GD_BLOCK = 128  # permutations per call of model_gd_under_permutations


def model_gd_under_permutations(x: Array, codes: np.ndarray, perms: np.ndarray, biascorrect: bool = True) -> Array:
    """MI (P, b) of the univariate variables of ``x`` (n, P) with class codes (n,) under each permutation (b, n).

    Permuting labels keeps the class sizes, so the unconditional entropy and every
    bias term are computed once; each permutation needs only the class sums of x and
    x^2: one matrix product with the permutations' class indicators for up to 32
    classes, else one scatter-add per permutation (PyTorch, threaded). Sums run in
    float32 (null maxima need no more); x is demeaned first. A constant variable is NaN.
    """
    xt = x if is_torch(x) else torch.from_numpy(np.ascontiguousarray(x))
    codes, values = encode_labels(codes)
    n_classes, n = len(values), xt.shape[0]
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    xt = xt.to(torch.float64) if xt.dtype == torch.float16 else xt
    xt = xt - xt.mean(0, keepdim=True)
    h_all = 0.5 * torch.log((xt * xt).sum(0) / (n - 1.0))
    xf = xt.to(torch.float32)
    xx = torch.cat([xf, xf * xf], 1)  # (n, 2P): sums of x and x^2 in one product
    bias = _dterm(counts) + _psi_sum(counts, 1) if biascorrect else np.zeros(n_classes)
    bias_cls = torch.as_tensor(bias, dtype=h_all.dtype, device=xt.device)
    if biascorrect:
        h_all = h_all - float(_dterm(n) + _psi_sum(n, 1))
    cnt = torch.as_tensor(counts, dtype=h_all.dtype, device=xt.device)
    w = cnt / n
    lab = torch.as_tensor(codes, device=xt.device)
    out = []
    block = max(1, 4096 // n_classes)
    for lo in range(0, perms.shape[0], block):
        p = torch.as_tensor(perms[lo:lo + block], device=xt.device)
        lp = lab[p]  # (b, n): the class of each sample under each permutation
        b = lp.shape[0]
        if n_classes <= 32:
            onehot = torch.zeros(n, b * n_classes, dtype=xf.dtype, device=xt.device)
            onehot.scatter_(1, (lp + torch.arange(b, device=xt.device)[:, None] * n_classes).T, 1.0)
            sums = (xx.T @ onehot).view(2, -1, b, n_classes)
        else:
            sums = torch.stack([torch.zeros(n_classes, xx.shape[1], dtype=xx.dtype, device=xx.device)
                                .index_add_(0, lp[k], xx) for k in range(b)], 1).permute(2, 1, 0).reshape(2, -1, b, n_classes)
        s1, s2 = sums.to(h_all.dtype).unbind(0)
        var = (s2 - s1 * s1 / cnt) / (cnt - 1.0)  # (P, b, C)
        h_cls = 0.5 * torch.log(var) - bias_cls
        out.append((h_all[:, None] - (h_cls * w).sum(-1)) / LN2)  # (P, b)
    res = torch.cat(out, 1) if out else torch.zeros((xt.shape[1], 0), dtype=h_all.dtype)
    return res if is_torch(x) else res.numpy()


def _restrict(perms: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Permutations of the kept samples only (their relative order under each permutation)."""
    new_index = np.cumsum(keep) - 1
    return np.stack([new_index[p[keep[p]]] for p in perms]) if len(perms) else perms


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


__all__ = ["permutations", "null_max_gg", "null_max_gd", "model_gd_under_permutations", "threshold", "pvalues"]
