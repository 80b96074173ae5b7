"""Gaussian-copula mutual information estimators (Ince et al. 2017), vectorised, in bits.

Every function takes NumPy arrays or PyTorch tensors (CPU or CUDA) with the
**sample axis first** and computes with the library it was given. Inputs are
assumed copula-normalised (see :func:`infodissect.info.copula.copnorm`), as in the
``gcmi`` reference; the estimators are then those of Gaussian variables:

- :func:`mi_gg`: continuous (multivariate) x continuous (multivariate), per batch item;
- :func:`mi_gg_pairs`: univariate continuous, every (x variable, y variable) pair as
  one matrix product;
- :func:`mi_model_gd`: continuous (uni- or multivariate) against a discrete variable,
  every x variable at once, through class sums (no loop over classes);
- :func:`cmi_ggg`: conditional MI given a continuous variable;
- :func:`coinfo_ggg`: co-information ``I(x; y | z) - I(x; y)`` (negative = redundancy,
  positive = synergy).

``biascorrect`` (default True) applies the reference's analytic correction of the
Gaussian entropy estimates (the digamma and ``dterm`` terms). Degenerate variables
(constant, NaN, fewer samples than dimensions) give NaN with a warning and leave the
others untouched.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from .backend import Array, class_sums, like, namespace, psi_half, take, to_numpy

LN2 = math.log(2.0)


def _psi_sum(n: int | np.ndarray, d: int) -> np.ndarray:
    """sum_{k=1..d} digamma((n - k) / 2) / 2 (nats), for scalar or per-class ``n``."""
    n = np.asarray(n, dtype=np.float64)
    return sum(psi_half(n - k) for k in range(1, d + 1)) if d else np.zeros_like(n)


def _dterm(n: int | np.ndarray) -> np.ndarray:
    """(ln 2 - ln(n - 1)) / 2, the reference's per-dimension entropy correction (nats)."""
    return (LN2 - np.log(np.asarray(n, dtype=np.float64) - 1.0)) / 2.0


def _warn_nan(result: Array, what: str) -> Array:
    xp = namespace(result)
    bad = int(to_numpy(xp.sum(xp.astype(~xp.isfinite(result), xp.int64))))
    if bad:
        warnings.warn(f"{what}: {bad} value(s) undefined (constant or NaN variable, or too few samples); "
                      "returned as NaN", RuntimeWarning, stacklevel=3)
        result = xp.where(xp.isfinite(result), result, xp.asarray(float("nan"), dtype=result.dtype,
                                                                   device=getattr(result, "device", None)))
    return result


def _real(x: Array) -> Array:
    """``x`` with float16 (and bfloat16) widened to float32: sums of squares need the range and precision."""
    xp = namespace(x)
    if str(x.dtype).endswith(("float16", "bfloat16")):
        return xp.astype(x, xp.float32)
    return x


def _same_samples(**arrays: Any) -> int:
    """The common sample count (axis 0) of the named arrays; a ``ValueError`` naming them when they differ."""
    sizes = {k: (len(v) if isinstance(v, (list, tuple)) else v.shape[0]) for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError("different sample counts along axis 0: "
                         + ", ".join(f"{k} has {n}" for k, n in sizes.items()))
    return next(iter(sizes.values()))


def _enough_samples(n: int, dims: int, what: str) -> None:
    """A ``ValueError`` when ``n`` samples cannot give a covariance of ``dims`` dimensions (singular)."""
    if n <= dims:
        raise ValueError(f"{what}: {n} samples for {dims} dimensions; the covariance is singular (need more "
                         "samples than dimensions)")


def _demean(x: Array) -> Array:
    xp = namespace(x)
    return x - xp.mean(x, axis=0, keepdims=True)


def _half_logdet_cov(x: Array) -> Array:
    """0.5 log det of the covariance (divisor n - 1) of ``x`` (n, *batch, d), demeaned: (*batch)."""
    xp = namespace(x)
    n = x.shape[0]
    xt = xp.moveaxis(xp.astype(x, xp.float64), 0, -1)  # (*batch, d, n); small matrices, summed in float64
    cov = xt @ xp.matrix_transpose(xt) / (n - 1.0)
    return xp.astype(_half_logdet(cov), x.dtype)


def _half_logdet(cov: Array) -> Array:
    """0.5 log det of (batches of) small covariance matrices, in float64; NaN where not positive."""
    xp = namespace(cov)
    sign, logdet = xp.linalg.slogdet(xp.astype(cov, xp.float64))
    half = xp.where(sign > 0, 0.5 * logdet, xp.asarray(float("nan"), dtype=logdet.dtype,
                                                       device=getattr(logdet, "device", None)))
    return xp.astype(half, cov.dtype)


def ent_g(x: Array, biascorrect: bool = True) -> Array:
    """Entropy (bits) of Gaussian ``x`` (n, *batch, d): one value per batch item."""
    x = _real(x)
    n, d = x.shape[0], x.shape[-1]
    _enough_samples(n, d, "ent_g: x")
    h = _half_logdet_cov(_demean(x)) + 0.5 * d * math.log(2 * math.pi * math.e)
    if biascorrect:
        h = h - float(d * _dterm(n) + _psi_sum(n, d))
    return _warn_nan(h / LN2, "ent_g")


def mi_gg(x: Array, y: Array, biascorrect: bool = True, demeaned: bool = False) -> Array:
    """MI (bits) between Gaussian ``x`` (n, *batch, dx) and ``y`` (n, *batch, dy), per batch item."""
    x, y = _real(x), _real(y)
    xp = namespace(x, y)
    n, dx, dy = _same_samples(x=x, y=y), x.shape[-1], y.shape[-1]
    _enough_samples(n, dx + dy, "mi_gg: x and y")
    xy = xp.concat([x, y], axis=-1)
    if not demeaned:
        xy = _demean(xy)
    mi = _half_logdet_cov(xy[..., :dx]) + _half_logdet_cov(xy[..., dx:]) - _half_logdet_cov(xy)
    if biascorrect:
        mi = mi - float(_psi_sum(n, dx) + _psi_sum(n, dy) - _psi_sum(n, dx + dy))
    return _warn_nan(mi / LN2, "mi_gg")


def standardize(x: Array) -> Array:
    """Columns of ``x`` (n, P) demeaned and scaled to unit norm (their dot products are correlations)."""
    xp = namespace(x)
    xc = _demean(x)
    return xc / xp.sqrt(xp.sum(xc * xc, axis=0, keepdims=True))


def correlation_pairs(x: Array, y: Array) -> Array:
    """Pearson correlation of every column of ``x`` (n, P) with every column of ``y`` (n, Q): (P, Q)."""
    return namespace(x, y).matrix_transpose(standardize(x)) @ standardize(y)


def mi_from_r2(r2: Array, n: int, dx: int = 1, biascorrect: bool = True) -> Array:
    """MI (bits) of a Gaussian ``dx``-variate x and univariate y from the squared multiple correlation R^2.

    -0.5 log(1 - R^2), plus the bias terms of :func:`mi_gg` for dims (dx, 1).
    """
    xp = namespace(r2)
    mi = -0.5 * xp.log1p(-xp.clip(r2, max=1.0 - 1e-15))
    if biascorrect:
        mi = mi + float(_psi_sum(n, dx + 1) - _psi_sum(n, dx) - _psi_sum(n, 1))
    return mi / LN2


def mi_from_correlation(r: Array, n: int, biascorrect: bool = True) -> Array:
    """MI (bits) of univariate Gaussian pairs from their correlation: -0.5 log(1 - r^2) (+ bias terms)."""
    return mi_from_r2(r * r, n, 1, biascorrect)


def mi_gg_pairs(x: Array, y: Array, biascorrect: bool = True) -> Array:
    """MI (bits) of every univariate pair (x[:, p], y[:, q]): (P, Q), as one matrix product."""
    x, y = _real(x), _real(y)
    _enough_samples(_same_samples(x=x, y=y), 2, "mi_gg_pairs: x and y")
    return _warn_nan(mi_from_correlation(correlation_pairs(x, y), x.shape[0], biascorrect), "mi_gg_pairs")


def encode_labels(labels: Array | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class codes 0..C-1 (NumPy int64) and the class values, from any label array."""
    values, codes = np.unique(to_numpy(labels), return_inverse=True)
    return codes.astype(np.int64).reshape(-1), values


def usable_classes(codes: np.ndarray, n_classes: int, dim: int) -> np.ndarray:
    """Sample mask keeping classes with more than ``dim`` samples (fewer give no covariance); warns."""
    counts = np.bincount(codes, minlength=n_classes)
    small = np.flatnonzero((counts > 0) & (counts <= dim))
    if small.size:
        warnings.warn(f"mi_model_gd: {small.size} class(es) with {dim} sample(s) or fewer left out "
                      f"(codes {small[:10].tolist()}{' ...' if small.size > 10 else ''})", RuntimeWarning,
                      stacklevel=3)
    return counts[codes] > dim


def mi_model_gd(x: Array, labels: Array | np.ndarray, biascorrect: bool = True, demeaned: bool = False) -> Array:
    """MI (bits) between Gaussian ``x`` and a discrete variable, for every x variable at once.

    ``x`` (n, P) holds P univariate variables, or (n, P, d) P variables of d dimensions;
    ``labels`` (n,) any class labels. Uses the reference's model: the entropy of x
    minus the class-weighted entropies of x within each class, all from class sums.
    Classes with no more samples than dimensions are left out (with a warning).
    """
    x = _real(x)
    xp = namespace(x)
    multi = x.ndim == 3
    d = x.shape[-1] if multi else 1
    _enough_samples(_same_samples(x=x, labels=to_numpy(labels).reshape(-1)), d, "mi_model_gd: x")
    codes, values = encode_labels(labels)
    keep = usable_classes(codes, len(values), d)
    if not keep.any():
        return _warn_nan(xp.full(tuple(x.shape[1:-1] if multi else x.shape[1:]), float("nan"), dtype=x.dtype),
                         "mi_model_gd")
    if not keep.all():
        x, codes = take(x, np.flatnonzero(keep), 0), codes[keep]
    codes, _ = encode_labels(codes)
    n, n_classes = x.shape[0], int(codes.max()) + 1
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    if not demeaned:
        x = _demean(x)
    if multi:
        means = class_sums(x, codes, n_classes) / like(counts.reshape(-1, 1, 1), x)
        dev = xp.astype(x - take(means, codes, 0), xp.float64)  # class covariances summed in float64
        h_all = _half_logdet_cov(x)
        outer = dev[..., :, None] * dev[..., None, :]
        h_cls = xp.astype(_half_logdet(class_sums(outer, codes, n_classes)
                                       / like((counts - 1.0).reshape(-1, 1, 1, 1), dev)), x.dtype)
    else:
        # Within-class sums of squares about the class means (centred: no cancellation when the classes lie
        # far apart relative to their spread).
        cnt = like(counts[:, None], x)
        dev = x - take(class_sums(x, codes, n_classes) / cnt, codes, 0)
        h_all = 0.5 * xp.log(xp.sum(x * x, axis=0) / (n - 1.0))
        h_cls = 0.5 * xp.log(class_sums(dev * dev, codes, n_classes) / (cnt - 1.0))
    if biascorrect:
        h_all = h_all - float(d * _dterm(n) + _psi_sum(n, d))
        h_cls = h_cls - like((d * _dterm(counts) + _psi_sum(counts, d))[:, None], x)
    weights = like((counts / n)[None, :], x)
    mi = h_all - xp.reshape(weights @ h_cls, h_all.shape)
    return _warn_nan(mi / LN2, "mi_model_gd")


def cmi_ggg(x: Array, y: Array, z: Array, biascorrect: bool = True, demeaned: bool = False) -> Array:
    """Conditional MI (bits) I(x; y | z) of Gaussian (n, *batch, d) variables, per batch item."""
    x, y, z = _real(x), _real(y), _real(z)
    xp = namespace(x, y, z)
    n, dx, dy, dz = _same_samples(x=x, y=y, z=z), x.shape[-1], y.shape[-1], z.shape[-1]
    _enough_samples(n, dx + dy + dz, "cmi_ggg: x, y and z")
    xyz = xp.concat([x, y, z], axis=-1)
    if not demeaned:
        xyz = _demean(xyz)
    zz = xyz[..., dx + dy:]
    xz = xp.concat([xyz[..., :dx], zz], axis=-1)
    yz = xyz[..., dx:]
    cmi = _half_logdet_cov(xz) + _half_logdet_cov(yz) - _half_logdet_cov(xyz) - _half_logdet_cov(zz)
    if biascorrect:
        cmi = cmi - float(_psi_sum(n, dx + dz) + _psi_sum(n, dy + dz) - _psi_sum(n, dx + dy + dz) - _psi_sum(n, dz))
    return _warn_nan(cmi / LN2, "cmi_ggg")


def coinfo_ggg(x: Array, y: Array, z: Array, biascorrect: bool = True) -> Array:
    """Co-information (bits) I(x; y | z) - I(x; y): negative = redundancy, positive = synergy."""
    return cmi_ggg(x, y, z, biascorrect) - mi_gg(x, y, biascorrect)


MAD_TO_SD = 1.482602218505602  # gcmi's factor: the sd of a Gaussian from its median absolute deviation


def _mixture_classes(x: Array, labels: Array | np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Class codes, class values and the dimension d of ``x``; raises when a class has fewer than d + 1 samples."""
    if x.ndim not in (2, 3):
        raise ValueError(f"{what}: x must be (n, P) or (n, P, d), got shape {tuple(x.shape)}")
    codes, values = encode_labels(labels)
    if codes.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: labels has {codes.shape[0]} samples, x has {x.shape[0]}")
    d = x.shape[-1] if x.ndim == 3 else 1
    counts = np.bincount(codes, minlength=len(values))
    small = np.flatnonzero(counts < d + 1)
    if small.size:
        k = small[0]
        raise ValueError(f"{what}: labels class {values[k].tolist()!r} has {counts[k]} sample(s); every class needs at "
                         f"least d + 1 = {d + 1} for its covariance ({small.size} class(es) too small)")
    return codes, values, d


def _mixture_dtype(x: Array) -> object:
    """The result dtype: float32 for half floats, float64 for integers, else x's own."""
    xp = namespace(x)
    if x.dtype in (xp.float32, xp.float64):
        return x.dtype
    return xp.float32 if xp.isdtype(x.dtype, "real floating") else xp.float64


def _mi_mixture(x: Array, codes: np.ndarray, d: int) -> Array:
    """The mixture MI (bits) of ``x`` (n, P) or (n, P, d) against class codes 0..C-1 (every class > d samples)."""
    xp = namespace(x)
    out_dtype = _mixture_dtype(x)
    n, n_classes = x.shape[0], int(codes.max()) + 1
    counts = np.bincount(codes, minlength=n_classes).astype(np.float64)
    x64 = xp.astype(x, xp.float64)  # the n-sized sums and the small linear algebra in float64
    if x.ndim == 2:
        x64 = x64[..., None]
    nan = float("nan")
    with np.errstate(all="ignore"):  # NaN/inf variables come out NaN, reported once by _warn_nan
        means = class_sums(x64, codes, n_classes) / like(counts.reshape(-1, 1, 1), x64)  # (C, P, d)
        dev = x64 - take(means, codes, 0)
        den = like((counts - 1.0)[:, None], x64)
        cov = [[class_sums(dev[..., i] * dev[..., j], codes, n_classes) / den for j in range(i + 1)]
               for i in range(d)]  # lower triangle, each (C, P)
        # Cholesky factors L (lower), elementwise over (class, variable); NaN where not positive definite.
        chol: list[list[Array]] = [[None] * d for _ in range(d)]
        for j in range(d):
            s = cov[j][j] - sum(chol[j][k] * chol[j][k] for k in range(j))
            chol[j][j] = xp.sqrt(xp.where(s > 0, s, nan))
            for i in range(j + 1, d):
                chol[i][j] = (cov[i][j] - sum(chol[i][k] * chol[j][k] for k in range(j))) / chol[j][j]
        hcond = sum(xp.log(chol[j][j]) for j in range(d)) + 0.5 * d * (math.log(2 * math.pi) + 1.0)  # (C, P)
        w = like(counts / n, x64)
        logw = like(np.log(counts / n)[:, None, None], x64)
        root_d = math.sqrt(d)
        hmix = xp.zeros(hcond.shape[1:], dtype=xp.float64, device=getattr(x64, "device", None))
        for c in range(n_classes):
            # 2d sigma points of class c: m_c +- sqrt(d) * (column r of L_c), stacked (2d, P) per coordinate.
            pts = [xp.stack([means[c, :, k] + sign * root_d * chol[k][r][c] if r <= k else means[c, :, k]
                             for sign in (1.0, -1.0) for r in range(d)], axis=0) for k in range(d)]
            # Log-density of every component m at those points (C, 2d, P), by forward substitution.
            z: list[Array] = []
            for k in range(d):
                r = pts[k][None] - means[:, None, :, k] - sum(chol[k][q][:, None] * z[q] for q in range(k))
                z.append(r / chol[k][k][:, None])
            loglik = -0.5 * sum(zk * zk for zk in z) - hcond[:, None] + 0.5 * d
            top = xp.max(loglik, axis=0)
            logmix = top + xp.log(xp.sum(xp.exp(loglik - top[None] + logw), axis=0))  # weighted log-sum-exp
            hmix = hmix + w[c] * xp.sum(logmix, axis=0)
        hmix = -hmix / (2.0 * d)
        mi = (hmix - xp.reshape(w[None] @ hcond, hmix.shape)) / LN2
    return xp.astype(mi, out_dtype)


def mi_mixture_gd(x: Array, labels: Array | np.ndarray) -> Array:
    """MI (bits) between continuous ``x`` and a discrete variable, from a Gaussian mixture (gcmi's ``mi_mixture_gd``).

    Each class is fitted by a Gaussian (class mean, covariance with divisor n_k - 1), weighted by
    its frequency; the MI is the mixture's entropy, by the unscented transform (2d sigma points
    ``m_k +- sqrt(d) * L_k[:, j]`` per class, ``L_k`` the Cholesky factor), minus the weighted
    class entropies. No bias correction (gcmi has none for the mixture). Sigma points as in
    gcmi's MATLAB ``mi_mixture_gd.m``; gcmi's Python port takes the rows of ``L_k`` instead, which
    differs for d >= 2 only (and breaks the transform).

    Parameters
    ----------
    x
        NumPy array or PyTorch tensor, (n, P): P univariate variables, or (n, P, d): P d-variate ones.
    labels
        (n,) class labels of any type.

    Returns
    -------
    Array
        (P,) MI in bits, x's library and device; float32 for float16 input, float64 for integer input.
        Variables with NaN or a singular class covariance give NaN, with one RuntimeWarning.

    Raises
    ------
    ValueError
        If a class of ``labels`` has fewer than d + 1 samples, or the sample counts differ.
    """
    codes, _, d = _mixture_classes(x, labels, "mi_mixture_gd")
    return _warn_nan(_mi_mixture(x, codes, d), "mi_mixture_gd")


def _median_rows(x: Array) -> Array:
    """Median of each row of ``x`` (m, n), keeping dims (m, 1): the mean of the two middle values for even n."""
    from .backend import is_torch

    if not is_torch(x):
        return np.median(x, axis=1, keepdims=True)
    s, n = namespace(x).sort(x, axis=1), x.shape[1]
    return s[:, (n - 1) // 2:(n + 1) // 2] if n % 2 else 0.5 * (s[:, n // 2 - 1:n // 2] + s[:, n // 2:n // 2 + 1])


def gcmi_mixture_cd(x: Array, labels: Array | np.ndarray, seed: int = 0, ids: Array | None = None) -> Array:
    """Gaussian-copula MI (bits) between continuous ``x`` and a discrete variable, via a Gaussian mixture.

    gcmi's ``gcmi_mixture_cd``: within each class, every dimension of x is copula-normalised
    (:func:`~infodissect.info.copula.copnorm_cat`, the class-conditional CDF), scaled by
    1.482602218505602 times its median absolute deviation and shifted to its median in that
    class (a robust Gaussian fit per class); then :func:`mi_mixture_gd` on the pooled data.
    Ties are broken at random (``seed``) by copnorm; a dimension with zero MAD in a class
    (over half its values tied) becomes constant there and gives NaN.

    Parameters
    ----------
    x
        NumPy array or PyTorch tensor, (n, P) or (n, P, d), raw (not copula-normalised) values.
    labels
        (n,) class labels of any type.
    seed
        Seed of copnorm's tie-breaking.
    ids
        (P,) global ids of the variables (tie-breaking independent of which other variables are
        computed with them); default their positions.

    Returns
    -------
    Array
        (P,) MI in bits, as :func:`mi_mixture_gd`.

    Raises
    ------
    ValueError
        If a class of ``labels`` has fewer than d + 1 samples, or the sample counts differ.
    """
    from .copula import copnorm_cat

    codes, values, d = _mixture_classes(x, labels, "gcmi_mixture_cd")
    xp = namespace(x)
    n = x.shape[0]
    # One row per variable (and dimension), samples contiguous: medians and copnorm run along rows.
    rows = xp.reshape(xp.moveaxis(xp.astype(x, _mixture_dtype(x)), 0, -1), (-1, n))
    meds, mads = [], []
    for c in range(len(values)):  # robust location and scale per class: (m, 1) each
        xc = take(rows, np.flatnonzero(codes == c), 1)
        meds.append(_median_rows(xc))
        mads.append(_median_rows(xp.abs(xc - meds[-1])))
    med, scale = xp.concat(meds, axis=1), MAD_TO_SD * xp.concat(mads, axis=1)  # (m, C)
    var = np.arange(rows.shape[0] // d) if ids is None else np.asarray(ids, np.int64).reshape(-1)
    row_ids = (var[:, None] * d + np.arange(d)).reshape(-1)  # one id per (variable, dimension) row
    # NaN rows are ranked as zeros and set back to NaN, so the one warning is the one below (not copnorm's:
    # warnings.catch_warnings is not thread-safe, and this runs in Dask's threads)
    bad = xp.any(xp.isnan(rows), axis=1, keepdims=True)
    cx = copnorm_cat(xp.where(bad, xp.zeros_like(rows), rows), codes, seed=seed, axis=-1, ids=row_ids)
    cx = xp.where(bad, xp.full_like(cx, float("nan")), cx)
    pooled = cx * take(scale, codes, 1) + take(med, codes, 1)
    pooled = xp.reshape(xp.matrix_transpose(pooled), (n,) + tuple(x.shape[1:]))
    return _warn_nan(_mi_mixture(pooled, codes, d), "gcmi_mixture_cd")
