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
    n, d = x.shape[0], x.shape[-1]
    h = _half_logdet_cov(_demean(x)) + 0.5 * d * math.log(2 * math.pi * math.e)
    if biascorrect:
        h = h - float(d * _dterm(n) + _psi_sum(n, d))
    return h / LN2


def mi_gg(x: Array, y: Array, biascorrect: bool = True, demeaned: bool = False) -> Array:
    """MI (bits) between Gaussian ``x`` (n, *batch, dx) and ``y`` (n, *batch, dy), per batch item."""
    xp = namespace(x, y)
    n, dx, dy = x.shape[0], x.shape[-1], y.shape[-1]
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
    xp = namespace(x)
    multi = x.ndim == 3
    d = x.shape[-1] if multi else 1
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
        # Within-class sums of squares from the class sums of x and x^2 (x is demeaned).
        s1, s2 = class_sums(x, codes, n_classes), class_sums(x * x, codes, n_classes)
        cnt = like(counts[:, None], x)
        h_all = 0.5 * xp.log(xp.sum(s2, axis=0) / (n - 1.0))
        h_cls = 0.5 * xp.log((s2 - s1 * s1 / cnt) / (cnt - 1.0))
    if biascorrect:
        h_all = h_all - float(d * _dterm(n) + _psi_sum(n, d))
        h_cls = h_cls - like((d * _dterm(counts) + _psi_sum(counts, d))[:, None], x)
    weights = like((counts / n)[None, :], x)
    mi = h_all - xp.reshape(weights @ h_cls, h_all.shape)
    return _warn_nan(mi / LN2, "mi_model_gd")


def cmi_ggg(x: Array, y: Array, z: Array, biascorrect: bool = True, demeaned: bool = False) -> Array:
    """Conditional MI (bits) I(x; y | z) of Gaussian (n, *batch, d) variables, per batch item."""
    xp = namespace(x, y, z)
    n, dx, dy, dz = x.shape[0], x.shape[-1], y.shape[-1], z.shape[-1]
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
