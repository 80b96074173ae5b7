"""Conditional MI I(x; y | cond) of many variables at once, with permutation statistics.

The condition is any mix of discrete variables (their joint classes are the *strata*)
and continuous ones (the matrix ``z``). Within each stratum, x, every continuous factor
and z are copula-normalised (gcmi's ``gccmi_ccd`` for a discrete condition); with ``z``
x and the continuous factors are replaced by their residuals on ``[1, z]`` (least
squares), whose correlation is the partial correlation: for Gaussian variables
``I(x; y | z) = -1/2 log(1 - R^2)`` of the residuals, exactly ``cmi_ggg``. A discrete
factor given a continuous ``z`` uses the chain rule, ``I([x, z]; y) - I(z; y)``
(:func:`.estimators.mi_model_gd`). The conditional MI is the strata's MI weighted by
their share of the samples.

**Permutations.** Samples are permuted within strata only, which keeps the condition's
relation to both x and y. With a continuous ``z`` the continuous factors' *residuals*
are permuted and taken off ``[1, z]`` again for every permutation (Freedman and Lane
1983), so the null statistic is the same partial correlation as the observed one. A
discrete factor given a continuous condition has no such scheme: it is refused (bin the
condition into a discrete one). For every permutation the largest conditional MI over
all variables gives the same maximum-statistic thresholds as the unconditional front.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .copula import copnorm
from .estimators import LN2, _psi_sum, encode_labels, mi_model_gd, standardize
from .stats import _whiten, model_gd_under_permutations

_PERM_BLOCK = 64  # permutations per block of products


@dataclass(frozen=True)
class Stratum:
    """The samples of one class of the discrete condition (all samples when there is none), prepared once."""

    index: np.ndarray  # sample positions
    weight: float  # share of the kept samples
    cont: np.ndarray  # (n_c, Qc) continuous factors: copula-normalised (and residualised on z) within the stratum
    codes: list[np.ndarray]  # per discrete factor, its class codes within the stratum
    z: np.ndarray | None  # (n_c, dz) copula-normalised continuous condition, or None
    basis: np.ndarray | None  # (n_c, dz + 1) orthonormal basis of [1, z]


def strata_of(discrete: list[np.ndarray], n: int) -> np.ndarray:
    """Joint class codes (n,) of several discrete condition variables (all 0 when there is none)."""
    if not discrete:
        return np.zeros(n, np.int64)
    codes = [encode_labels(c)[0] for c in discrete]
    place = np.cumprod([1] + [int(c.max()) + 1 for c in codes[:-1]])  # mixed-radix: one code per joint class
    return encode_labels(np.stack(codes, 1) @ place)[0]


def permutations_within(strata: np.ndarray, n_perm: int, seed: int = 0) -> np.ndarray:
    """(n_perm, n) seeded permutations of the samples that move each sample only within its stratum."""
    rng = np.random.default_rng([seed, 0x57A7])
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    out = np.empty((n_perm, len(strata)), np.int64)
    for k in range(n_perm):
        for g in groups:
            out[k, g] = g[rng.permutation(len(g))]
    return out


def orthonormal_basis(z: np.ndarray) -> np.ndarray:
    """(n, dz + 1) orthonormal basis of the span of a constant and the columns of ``z`` (n, dz)."""
    q, _ = np.linalg.qr(np.concatenate([np.ones((len(z), 1)), z], 1))
    return q


def residualise(a: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Residuals of the columns of ``a`` (n, k) on ``basis`` (n, b) orthonormal columns."""
    return a - basis @ (basis.T @ a)


def cmi_bias(n: float, dx: int, dy: int, dz: int) -> float:
    """The analytic bias correction (bits) of Gaussian I(x; y | z) with these dimensions (cmi_ggg's)."""
    return float(_psi_sum(n, dx + dz) + _psi_sum(n, dy + dz) - _psi_sum(n, dx + dy + dz) - _psi_sum(n, dz)) / LN2


def prepare_strata(strata: np.ndarray, cont: np.ndarray, disc: list[np.ndarray], z: np.ndarray | None,
                   seed: int, min_size: int) -> list[Stratum]:
    """The :class:`Stratum` of each class of ``strata`` with more than ``min_size`` samples (the others are left
    out with a warning naming them; none left is a ``ValueError``). ``cont`` (n, Qc) raw continuous factors,
    ``disc`` the codes of the discrete factors, ``z`` (n, dz) the raw continuous condition or None."""
    values, counts = np.unique(strata, return_counts=True)
    small = values[counts <= min_size]
    if small.size:
        if small.size == values.size:
            raise ValueError(f"cond: every stratum has {min_size} sample(s) or fewer (largest {counts.max()}); "
                             "conditional MI needs more samples per class of the condition")
        warnings.warn(f"cond: {small.size} of {values.size} strata with {min_size} sample(s) or fewer left out "
                      f"(strata {small[:10].tolist()}{' ...' if small.size > 10 else ''}, "
                      f"{int(counts[counts <= min_size].sum())} samples); the others are weighted by their share "
                      "of the rest", RuntimeWarning, stacklevel=3)
    kept = values[counts > min_size]
    total = float(counts[counts > min_size].sum())
    out = []
    for s in kept:
        idx = np.flatnonzero(strata == s)
        c = copnorm(cont[idx], seed=seed + 1) if cont.shape[1] else cont[idx]
        zc = copnorm(z[idx], seed=seed + 7919) if z is not None else None
        basis = orthonormal_basis(zc) if zc is not None else None
        if basis is not None and c.shape[1]:
            c = residualise(c, basis)
        out.append(Stratum(idx, len(idx) / total, c, [encode_labels(d[idx])[0] for d in disc], zc, basis))
    return out


def _unit_rows(x: np.ndarray, d: int) -> np.ndarray:
    """(n, P*d) copula columns -> (n, P*d) with each variable's d columns orthonormal (demeaned; NaN if singular):
    :func:`.estimators.standardize` (d = 1) or :func:`.stats._whiten`."""
    with np.errstate(invalid="ignore", divide="ignore"):  # a variable constant in the stratum: NaN (thread-safe)
        return standardize(x) if d == 1 else _whiten(x.reshape(len(x), -1, d))


def _r2_mi(r2: np.ndarray, n: int, dx: int, dz: int, biascorrect: bool) -> np.ndarray:
    """-1/2 log2(1 - R^2) minus the bias of (dx, 1, dz) when ``biascorrect``."""
    mi = -0.5 * np.log1p(-np.clip(r2, None, 1.0 - 1e-15)) / LN2
    return mi - cmi_bias(n, dx, 1, dz) if biascorrect else mi


def _stratum_x(rows: np.ndarray, st: Stratum, d: int, seed: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stratum's copula-normalised x (n_c, P*d), residualised on z, and which variables are constant in it."""
    sub = rows[:, st.index]
    const = (sub == sub[:, :1]).all(1).reshape(-1, d).all(1)
    x = copnorm(sub, seed=seed, axis=-1, ids=ids).T
    if st.basis is not None:
        x = residualise(x, st.basis)
    return x, const


def _null_cont(u: np.ndarray, y: np.ndarray, basis: np.ndarray | None, perms: np.ndarray, d: int) -> np.ndarray:
    """R^2 (P, b, Q) of each variable's orthonormal columns ``u`` (n, P*d) with each permuted (and, given z,
    re-residualised) continuous factor ``y`` (n, Q) under local permutations ``perms`` (b, n)."""
    n, q = y.shape
    b = len(perms)
    yp = y[perms.reshape(-1)].reshape(b, n, q).transpose(1, 0, 2).reshape(n, b * q)  # (n, b*Q)
    yp = yp - yp.mean(0, keepdims=True)
    ss = (yp * yp).sum(0)
    if basis is not None:
        proj = basis.T @ yp
        ss = ss - (proj * proj).sum(0)  # |(I - H) y*|^2: y* residualised again
        yp = yp - basis @ proj
    r = u.T @ yp  # (P*d, b*Q)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = (r * r).reshape(-1, d, b * q).sum(1) / ss
    return r2.reshape(-1, b, q)


def conditional_rows(rows: np.ndarray, strata: list[Stratum], cont_pos: list[int], disc_pos: list[int], d: int,
                     biascorrect: bool, seed: int, ids: np.ndarray, perms: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conditional MI of raw rows (P*d, n) (d rows per variable) with every factor given the condition.

    Parameters
    ----------
    rows
        Raw values, one row per variable component, samples along the last axis.
    strata
        The condition, from :func:`prepare_strata`.
    cont_pos, disc_pos
        Positions of the continuous and discrete factors in the output's factor axis.
    d
        Components per variable.
    ids
        Global id of each row (tie-breaking, independent of chunking).
    perms
        (n_perm, n) permutations within strata (:func:`permutations_within`), or None.

    Returns
    -------
    mi, null_max, constant
        (P, Q) MI in bits; (n_perm, Q) the largest MI over the variables under each permutation
        (empty without ``perms``); (P,) variables constant in every stratum (their MI is 0).
    """
    n_var, n_q = rows.shape[0] // d, len(cont_pos) + len(disc_pos)
    n_perm = 0 if perms is None else len(perms)
    mi = np.zeros((n_var, n_q))
    constant = np.ones(n_var, bool)
    prepared = []
    for st in strata:
        x, const = _stratum_x(rows, st, d, seed, ids)
        constant &= const
        n_c, dz = len(st.index), (0 if st.z is None else st.z.shape[1])
        u = _unit_rows(x, d) if cont_pos else None
        if u is not None:
            r2 = _null_cont(u, st.cont, st.basis, np.arange(n_c)[None], d)[:, 0]
            mi[:, cont_pos] += st.weight * np.where(const[:, None], 0.0, _r2_mi(r2, n_c, d, dz, biascorrect))
        for q, codes in zip(disc_pos, st.codes):
            xv = x.reshape(n_c, -1, d) if d > 1 else x
            if st.z is None:
                part = mi_model_gd(xv, codes, biascorrect)
            else:  # chain rule: I([x, z]; y) - I(z; y)
                zb = np.broadcast_to(st.z[:, None, :], (n_c, n_var, dz))
                part = mi_model_gd(np.concatenate([x.reshape(n_c, -1, d), zb], 2), codes, biascorrect) \
                    - mi_model_gd(st.z[:, None, :], codes, biascorrect)[0]
            mi[:, q] += st.weight * np.where(const, 0.0, part)
        if n_perm:
            pos = np.full(rows.shape[1], -1)
            pos[st.index] = np.arange(n_c)
            prepared.append((st, x, u, const, pos[perms[:, st.index]], n_c, dz))  # local permutations
    mi[constant] = 0.0
    if not n_perm:
        return mi, np.zeros((0, n_q)), constant
    null = np.empty((n_perm, n_q))
    for lo in range(0, n_perm, _PERM_BLOCK):
        b = min(_PERM_BLOCK, n_perm - lo)
        acc = np.zeros((b, n_var, n_q))
        for st, x, u, const, local, n_c, dz in prepared:
            block = local[lo:lo + b]
            if u is not None:
                r2 = _null_cont(u, st.cont, st.basis, block, d)  # (P, b, Qc)
                acc[..., cont_pos] += st.weight * np.where(const[None, :, None], 0.0,
                                                           _r2_mi(r2, n_c, d, dz, biascorrect).transpose(1, 0, 2))
            for q, codes in zip(disc_pos, st.codes):
                acc[..., q] += st.weight * np.where(const[None], 0.0, model_gd_under_permutations(x, codes, block, biascorrect).T)
        acc[:, constant] = -np.inf
        acc = np.where(np.isnan(acc), -np.inf, acc)
        null[lo:lo + b] = acc.max(1) if n_var else -np.inf
    return mi, null, constant


__all__ = ["Stratum", "strata_of", "permutations_within", "prepare_strata", "conditional_rows", "cmi_bias",
           "orthonormal_basis", "residualise"]
