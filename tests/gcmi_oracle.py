"""Plain NumPy/SciPy reference ("oracle") for Gaussian-copula mutual information.

Written straight from the formulas of Ince et al. (2017), "A statistical framework
for neuroimaging data analysis based on mutual information estimated via a Gaussian
copula", Human Brain Mapping 38:1541-1573, and the reference implementation
robince/gcmi (python/gcmi.py): covariance with divisor n-1, entropies as half
log-determinants from Cholesky factors, and the analytic bias correction
    sum_{i=1..d} psi((n - i) / 2) / 2  +  d * (ln 2 - ln(n - 1)) / 2.

Deliberately simple and slow: one pair at a time, float64, loops over classes.
Inside, the layout is gcmi's (variables x trials); the public functions take
SAMPLES-FIRST arrays, x of shape (n,) or (n, d), and discrete labels 0..m-1.
All information values are in bits.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri, psi

LN2 = np.log(2.0)


def _vt(x) -> np.ndarray:
    """Samples-first (n,) or (n, d) -> gcmi layout (d, n), float64."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError("expected shape (n,) or (n, d)")
    return a.T.copy()


def _labels(y, n: int, m: int) -> np.ndarray:
    y = np.asarray(y).ravel().astype(np.int64)
    if y.size != n:
        raise ValueError("number of trials do not match")
    if y.min() < 0 or y.max() > m - 1:
        raise ValueError("labels out of range 0..m-1")
    return y


def _half_logdet(c: np.ndarray) -> float:
    """0.5 * log det(c) = sum(log(diag(chol(c)))), as gcmi."""
    return float(np.sum(np.log(np.diagonal(np.linalg.cholesky(c)))))


def _cov(x: np.ndarray, demeaned: bool) -> np.ndarray:
    """Covariance of a (d, n) array with divisor n - 1."""
    if not demeaned:
        x = x - x.mean(axis=1, keepdims=True)
    return x @ x.T / float(x.shape[1] - 1)


def _bias(n: int, d: int) -> float:
    """gcmi entropy bias term for d Gaussian variables and n samples (nats)."""
    psiterms = psi((n - np.arange(1, d + 1)).astype(np.float64) / 2.0) / 2.0
    dterm = (LN2 - np.log(n - 1.0)) / 2.0
    return float(d * dterm + psiterms.sum())


def ctransform(x) -> np.ndarray:
    """Empirical CDF (rank + 1) / (n + 1) of each column (tie-free data)."""
    xv = _vt(x)
    r = np.argsort(np.argsort(xv, axis=1), axis=1)
    c = (r + 1.0) / (xv.shape[1] + 1.0)
    return c.T[:, 0] if np.ndim(x) == 1 else c.T


def copnorm(x) -> np.ndarray:
    """Copula normalisation: inverse standard normal CDF of ctransform(x)."""
    return ndtri(ctransform(x))


def ent_g(x, biascorrect: bool = True) -> float:
    """Entropy (bits) of a Gaussian variable x, shape (n,) or (n, d)."""
    xv = _vt(x)
    d, n = xv.shape
    h = _half_logdet(_cov(xv, False)) + 0.5 * d * (np.log(2 * np.pi) + 1.0)
    if biascorrect:
        h -= _bias(n, d)
    return h / LN2


def mi_gg(x, y, biascorrect: bool = True, demeaned: bool = False) -> float:
    """MI (bits) between Gaussian variables x and y (each (n,) or (n, d))."""
    xv, yv = _vt(x), _vt(y)
    dx, n = xv.shape
    dy = yv.shape[0]
    if yv.shape[1] != n:
        raise ValueError("number of trials do not match")
    c = _cov(np.vstack([xv, yv]), demeaned)
    hx = _half_logdet(c[:dx, :dx])
    hy = _half_logdet(c[dx:, dx:])
    hxy = _half_logdet(c)
    if biascorrect:
        hx -= _bias(n, dx)
        hy -= _bias(n, dy)
        hxy -= _bias(n, dx + dy)
    return (hx + hy - hxy) / LN2


def mi_model_gd(x, y, ym: int, biascorrect: bool = True, demeaned: bool = False) -> float:
    """MI (bits) between Gaussian x and discrete y in 0..ym-1 (class-conditional Gaussians)."""
    xv = _vt(x)
    d, n = xv.shape
    y = _labels(y, n, ym)
    if not demeaned:
        xv = xv - xv.mean(axis=1, keepdims=True)
    hunc = _half_logdet(xv @ xv.T / float(n - 1))
    if biascorrect:
        hunc -= _bias(n, d)
    hcond = 0.0
    for k in range(ym):
        xk = xv[:, y == k]
        nk = xk.shape[1]
        hk = _half_logdet(_cov(xk, False))
        if biascorrect:
            hk -= _bias(nk, d)
        hcond += (nk / float(n)) * hk
    return (hunc - hcond) / LN2


def cmi_ggg(x, y, z, biascorrect: bool = True, demeaned: bool = False) -> float:
    """Conditional MI (bits) I(x; y | z) for Gaussian x, y, z."""
    xv, yv, zv = _vt(x), _vt(y), _vt(z)
    dx, n = xv.shape
    dy, dz = yv.shape[0], zv.shape[0]
    if yv.shape[1] != n or zv.shape[1] != n:
        raise ValueError("number of trials do not match")
    c = _cov(np.vstack([xv, yv, zv]), demeaned)
    ix = np.r_[np.arange(dx), np.arange(dx + dy, dx + dy + dz)]
    hz = _half_logdet(c[dx + dy:, dx + dy:])
    hxz = _half_logdet(c[np.ix_(ix, ix)])
    hyz = _half_logdet(c[dx:, dx:])
    hxyz = _half_logdet(c)
    if biascorrect:
        hz -= _bias(n, dz)
        hxz -= _bias(n, dx + dz)
        hyz -= _bias(n, dy + dz)
        hxyz -= _bias(n, dx + dy + dz)
    return (hxz + hyz - hxyz - hz) / LN2


def gcmi_cc(x, y) -> float:
    """Gaussian-copula MI (bits) between continuous x and y (bias-corrected, as gcmi)."""
    return mi_gg(copnorm(x), copnorm(y), biascorrect=True, demeaned=True)


def gcmi_model_cd(x, y, ym: int) -> float:
    """Gaussian-copula MI (bits) between continuous x and discrete y in 0..ym-1."""
    return mi_model_gd(copnorm(x), y, ym, biascorrect=True, demeaned=True)


def gccmi_ccd(x, y, z, zm: int, biascorrect: bool = True) -> float:
    """GC conditional MI (bits) I(x; y | z), z discrete in 0..zm-1; raw x, y.

    x and y are copula-normalised within each class of z, mi_gg is computed per
    class and weighted by the class probability n_k / n (gcmi's first output).
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = xa.shape[0]
    z = _labels(z, n, zm)
    out = 0.0
    for k in range(zm):
        idx = z == k
        out += (idx.sum() / float(n)) * mi_gg(copnorm(xa[idx]), copnorm(ya[idx]),
                                               biascorrect=biascorrect, demeaned=True)
    return out


def coinfo_ggg(x, y, z, biascorrect: bool = True) -> float:
    """Co-information cmi_ggg(x, y, z) - mi_gg(x, y); < 0 redundancy, > 0 synergy."""
    return cmi_ggg(x, y, z, biascorrect=biascorrect) - mi_gg(x, y, biascorrect=biascorrect)


def mi_gaussian_analytic(rho: float) -> float:
    """True MI (bits) of a bivariate Gaussian with correlation rho."""
    return -0.5 * np.log2(1.0 - rho ** 2)


def mi_gaussian_analytic_cov(cov, dx: int) -> float:
    """True MI (bits) between the first dx variables and the rest of a joint Gaussian."""
    c = np.asarray(cov, dtype=np.float64)
    _, lx = np.linalg.slogdet(c[:dx, :dx])
    _, ly = np.linalg.slogdet(c[dx:, dx:])
    _, lxy = np.linalg.slogdet(c)
    return 0.5 * (lx + ly - lxy) / LN2


# --- Gaussian-mixture estimators -------------------------------------------------
# Transcribed from robince/gcmi: python/gcmi.py `mi_mixture_gd`, `_norm_innerv`,
# `gcmi_mixture_cd` (same formulas in the packaged python/src/gcmi/_core.py) and
# matlab/mi_mixture_gd.m, matlab/gcmi_mixture_cd.m. The mixture entropy is the
# unscented-transform approximation of Huber, Bailey, Durrant-Whyte & Hanebeck (2008),
# "On entropy approximation for Gaussian mixture random vectors", cited by gcmi.
#
# One difference between gcmi's two implementations, for d >= 2 only: MATLAB takes the
# sigma points along the columns of the lower Cholesky factor L (chol(C)' with MATLAB's
# upper chol), so that sum_j a_j a_j' = C as the unscented transform requires; the
# Python port takes np.linalg.cholesky(C).T, i.e. the rows of L (sum_j = L'L != C), and
# then no longer gives MI = 0 for a single class. The default here is MATLAB's (the
# transform as published); ``python_port=True`` reproduces the Python port. In one
# dimension both are the same.

def mi_mixture_gd(x, y, ym: int, python_port: bool = False) -> float:
    """MI (bits) between continuous x ((n,) or (n, d)) and discrete y in 0..ym-1, via a Gaussian mixture.

    Per class k (n_k samples, weight w_k = n_k / n): mean m_k, covariance C_k (divisor
    n_k - 1), lower Cholesky factor L_k and entropy H_k = sum log diag L_k + d/2 (log 2 pi + 1).
    The mixture entropy by the unscented transform, with the 2d sigma points
    m_k +- sqrt(d) a_kj (a_kj the j-th column of L_k):
        Hmix = -1 / (2d) * sum_k w_k * sum_{2d points s of k} log sum_m w_m N(s; m_m, C_m),
        log N(s; m_m, C_m) = -|L_m^-1 (s - m_m)|^2 / 2 - H_m + d / 2,
    the sum over m by a weighted log-sum-exp. I = (Hmix - sum_k w_k H_k) / ln 2, no bias
    correction (gcmi: "can correct Hcond, but not Hmix").
    """
    from scipy.special import logsumexp

    xv = _vt(x)
    d, n = xv.shape
    y = _labels(y, n, ym)
    cc = 0.5 * (np.log(2.0 * np.pi) + 1.0)
    m = np.zeros((ym, d))
    ntrl_y = np.zeros(ym)
    chc = np.zeros((ym, d, d))
    hcond = np.zeros(ym)
    for yi in range(ym):
        xm = xv[:, y == yi]
        m[yi] = xm.mean(axis=1)
        ntrl_y[yi] = xm.shape[1]
        xm = xm - m[yi][:, None]
        chc[yi] = np.linalg.cholesky(xm @ xm.T / float(ntrl_y[yi] - 1))
        hcond[yi] = np.sum(np.log(np.diagonal(chc[yi]))) + cc * d
    w = ntrl_y / float(n)
    hmix = 0.0
    for yi in range(ym):
        ps = np.sqrt(d) * (chc[yi].T if python_port else chc[yi])
        usc = np.hstack([m[yi][:, None] + ps, m[yi][:, None] - ps])  # unscented points of class yi
        log_lik = np.zeros((ym, 2 * d))
        for mi in range(ym):
            sol = np.linalg.solve(chc[mi], usc - m[mi][:, None])  # normalised innovations
            log_lik[mi] = -0.5 * (sol * sol).sum(axis=0) - hcond[mi] + 0.5 * d
        hmix += w[yi] * logsumexp(log_lik, axis=0, b=w[:, None]).sum()
    hmix = -hmix / (2 * d)
    return (hmix - np.sum(w * hcond)) / LN2


MAD_TO_SD = 1.482602218505602  # gcmi's factor: sd of a Gaussian from its median absolute deviation


def gcmi_mixture_cd(x, y, ym: int, python_port: bool = False) -> float:
    """Gaussian-copula MI (bits) of continuous x and discrete y via a Gaussian mixture (gcmi's steps).

    Within each class, each dimension of x is copula-normalised (the class-conditional
    CDF), then scaled by 1.482602218505602 * MAD and shifted by the median of the raw
    class data (gcmi: "a robust way to fit the gaussian mixture"); the classes, pooled,
    go to :func:`mi_mixture_gd`.
    """
    xv = _vt(x)
    n = xv.shape[1]
    y = _labels(y, n, ym)
    classdat, ydat = [], []
    for yi in range(ym):
        xm = xv[:, y == yi]
        cxm = copnorm(xm.T).T
        med = np.median(xm, axis=1)[:, None]
        mad = np.median(np.abs(xm - med), axis=1)[:, None]
        classdat.append(cxm * (MAD_TO_SD * mad) + med)
        ydat.append(np.full(xm.shape[1], yi))
    return mi_mixture_gd(np.concatenate(classdat, axis=1).T, np.concatenate(ydat), ym, python_port)
