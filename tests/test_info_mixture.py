"""Gaussian-mixture MI (gcmi's mi_mixture_gd / gcmi_mixture_cd) against the per-variable oracle, and sanity checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import gcmi_oracle as oracle
from infodissect.info import gcmi_mixture_cd, mi_mixture_gd

TOL = 1e-9

# (seed, class sizes, separation of the class means in within-class sds): 2 to 7 classes of unequal
# sizes, from well separated to overlapping.
CASES = [
    (0, (40, 90), 4.0),
    (1, (25, 60, 33), 0.3),
    (2, (15, 30, 45, 60, 22), 1.0),
    (3, (12, 20, 35, 18, 50, 9, 28), 0.15),
    (4, (70, 11, 41, 30, 25, 60, 19), 6.0),
]
# Label values the estimators see (any values; class k of the oracle is VALUES[k]), unsorted on purpose.
VALUES = np.array([7, -2, 30, 11, 5, 100, 3])


def _data(seed: int, sizes: tuple[int, ...], sep: float, d: int, n_vars: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """x (n, n_vars, d): per class its own mean and correlated covariance; class codes (n,) 0..k-1, shuffled."""
    rng = np.random.default_rng(seed)
    k = len(sizes)
    codes = np.repeat(np.arange(k), sizes)
    rng.shuffle(codes)
    means = sep * rng.normal(size=(k, n_vars, d))
    chol = np.tril(0.6 * rng.normal(size=(k, n_vars, d, d)), -1) + np.eye(d) * np.exp(0.3 * rng.normal(size=(k, n_vars, 1, d)))
    x = means[codes] + np.einsum("nvij,nvj->nvi", chol[codes], rng.normal(size=(len(codes), n_vars, d)))
    return x, codes


def _squeeze(x: np.ndarray) -> np.ndarray:
    """(n, P, 1) -> (n, P): univariate variables in the estimators' 2-D layout."""
    return x[..., 0] if x.shape[-1] == 1 else x


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[1])}cls-sep{c[2]}")
def test_mi_mixture_gd_matches_the_oracle(case, d):
    x, codes = _data(*case, d)
    k = len(case[1])
    want = [oracle.mi_mixture_gd(x[:, v], codes, k) for v in range(x.shape[1])]
    got = mi_mixture_gd(_squeeze(x), VALUES[codes])
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    got_t = mi_mixture_gd(torch.as_tensor(_squeeze(x)), torch.as_tensor(VALUES[codes]))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float64
    np.testing.assert_allclose(got_t.numpy(), want, rtol=0, atol=TOL)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("case", CASES[1:4], ids=lambda c: f"{len(c[1])}cls-sep{c[2]}")
def test_gcmi_mixture_cd_matches_the_oracle(case, d):
    x, codes = _data(*case, d)
    raw = np.sinh(1.5 * x) + 0.5 * x  # monotone, heavy-tailed, tie-free
    k = len(case[1])
    labels = np.array([f"class {v}" for v in VALUES])[codes]
    want = [oracle.gcmi_mixture_cd(raw[:, v], codes, k) for v in range(x.shape[1])]
    np.testing.assert_allclose(gcmi_mixture_cd(_squeeze(raw), labels), want, rtol=0, atol=TOL)
    got_t = gcmi_mixture_cd(torch.as_tensor(_squeeze(raw)), labels)
    np.testing.assert_allclose(got_t.numpy(), want, rtol=0, atol=TOL)


def test_sigma_points_are_matlab_gcmi_s_and_the_python_port_agrees_in_one_dimension():
    """gcmi's Python port takes sigma points along the rows of the Cholesky factor, MATLAB along its
    columns (the unscented transform); they agree for univariate x. With one class the transform is
    exact, so MI = 0 -- which the Python port misses once x is correlated in >= 2 dimensions."""
    x, codes = _data(1, (25, 60, 33), 0.3, 3)
    for v in range(x.shape[1]):
        assert oracle.mi_mixture_gd(x[:, v, 0], codes, 3, python_port=True) == oracle.mi_mixture_gd(x[:, v, 0], codes, 3)
    one = np.zeros(len(codes), dtype=np.int64)
    assert abs(oracle.mi_mixture_gd(x[:, 0], one, 1)) < 1e-12
    assert oracle.mi_mixture_gd(x[:, 0], one, 1, python_port=True) > 0.01
    np.testing.assert_allclose(mi_mixture_gd(x, one), 0.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gcmi_mixture_cd(np.exp(x), one), 0.0, rtol=0, atol=1e-12)


def test_separated_classes_approach_the_label_entropy():
    rng = np.random.default_rng(5)
    sizes = np.array([100, 300, 50, 550])
    codes = np.repeat(np.arange(4), sizes)
    p = sizes / sizes.sum()
    h_labels = -np.sum(p * np.log2(p))
    z = rng.normal(size=(len(codes), 1, 2))
    direction = rng.normal(size=(4, 1, 2))
    mi = [mi_mixture_gd(z + sep * direction[codes], codes).item() for sep in (0.3, 1.0, 3.0, 1000.0)]
    assert np.all(np.diff(mi) > 0) and mi[0] < 0.5 * h_labels
    assert abs(mi[-1] - h_labels) < 1e-9  # no overlap: the mixture entropy is H(labels) + the class entropies
    raw = np.exp(z[..., 0] + 50.0 * codes[:, None])  # separated, skewed
    assert abs(gcmi_mixture_cd(raw, codes).item() - h_labels) < 1e-9


@pytest.mark.parametrize("d", [1, 2])
def test_independent_labels_give_near_zero(d):
    rng = np.random.default_rng(6)
    n = 3000
    labels = rng.choice(4, n, p=[0.1, 0.2, 0.3, 0.4])  # H = 1.85 bits
    gauss = _squeeze(rng.normal(size=(n, 40, d)))
    skewed = _squeeze(rng.gamma(2.0, size=(n, 40, d)))
    for mi in (mi_mixture_gd(gauss, labels), gcmi_mixture_cd(skewed, labels)):
        assert mi.max() < 0.05 and abs(mi.mean()) < 0.02  # no bias correction: a small positive bias


@pytest.mark.parametrize("fn", [mi_mixture_gd, gcmi_mixture_cd])
def test_errors_name_the_offending_labels(fn):
    rng = np.random.default_rng(7)
    labels = np.array(["a"] * 30 + ["b"] * 30 + ["rare"] * 2)
    x = rng.normal(size=(62, 3, 2))
    with pytest.raises(ValueError, match=rf"{fn.__name__}: labels class 'rare' has 2 sample\(s\).* d \+ 1 = 3"):
        fn(x, labels)
    fn(x[..., 0], labels)  # univariate: 2 samples are enough
    with pytest.raises(ValueError, match=r"labels class 'rare' has 1 sample\(s\)"):
        fn(x[:61, :, 0], labels[:61])
    with pytest.raises(ValueError, match="labels has 61 samples, x has 62"):
        fn(x, labels[:61])
    with pytest.raises(ValueError, match=r"x must be \(n, P\) or \(n, P, d\)"):
        fn(x[:, 0, 0], labels)


@pytest.mark.parametrize("fn", [mi_mixture_gd, gcmi_mixture_cd])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_nan_gives_nan_for_that_variable_with_one_warning(fn, lib):
    x, codes = _data(2, (15, 30, 45, 60, 22), 1.0, 2, n_vars=5)
    x = np.exp(x)
    clean = fn(x[:, [0, 2, 4]], codes)
    x[7, 1, 0] = np.nan
    x[:, 3, 1] = np.nan
    arr = torch.as_tensor(x) if lib == "torch" else x
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fn(arr, codes)
    got = np.asarray(got)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == [
        f"{fn.__name__}: 2 value(s) undefined (constant or NaN variable, or too few samples); returned as NaN"]
    assert np.isnan(got[[1, 3]]).all()
    np.testing.assert_allclose(got[[0, 2, 4]], clean, rtol=0, atol=1e-12)


def test_singular_class_covariance_gives_nan_with_one_warning():
    x, codes = _data(0, (40, 90), 4.0, 2, n_vars=3)
    x[codes == 1, 1, 0] = 2.5  # constant within class 1: singular covariance
    raw = x.copy()
    raw[np.flatnonzero(codes == 0)[:25], 2, 1] = 0.0  # 25 of 40 tied: zero MAD in class 0 (gcmi_mixture_cd)
    with pytest.warns(RuntimeWarning, match="mi_mixture_gd: 1 value") as caught:
        got = mi_mixture_gd(x, codes)
    assert len(caught) == 1 and np.isnan(got[1]) and np.isfinite(got[[0, 2]]).all()
    with pytest.warns(RuntimeWarning, match="gcmi_mixture_cd: 2 value") as caught:
        got = gcmi_mixture_cd(raw, codes)
    assert len(caught) == 1 and np.isnan(got[1:]).all() and np.isfinite(got[0])


@pytest.mark.parametrize("fn", [mi_mixture_gd, gcmi_mixture_cd])
def test_half_and_single_precision_inputs(fn):
    x, codes = _data(3, (12, 20, 35, 18, 50, 9, 28), 1.0, 2)
    # float16 is computed as float32 (copnorm breaks float16's ties as it would the same float32 values).
    x16 = x.astype(np.float16)
    want = fn(x16.astype(np.float32), codes)
    assert want.dtype == np.float32
    for arr in (x16, torch.as_tensor(x16), torch.as_tensor(x16).to(torch.float32)):
        got = fn(arr, codes)
        assert str(got.dtype).endswith("float32")
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)
    # float32 (tie-free) within float32 rounding of float64.
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(fn(x32, codes), fn(x32.astype(np.float64), codes), rtol=0, atol=1e-5)


def test_the_front_offers_the_mixture_estimator_for_discrete_factors():
    import xarray as xr

    from infodissect.info.xr import InputError, mutual_information

    rng = np.random.default_rng(11)
    n = 300
    labels = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + labels[:, None] * np.array([0.0, 0.5, 1.0, 2.0])
    xa = xr.DataArray(x, dims=("sample", "unit"))
    f = xr.Dataset({"k": ("sample", labels), "v": ("sample", rng.normal(size=n))})
    mix = mutual_information(xa, f, estimator="mixture")
    np.testing.assert_allclose(mix.sel(factor="k"), gcmi_mixture_cd(x, labels), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(mix.sel(factor="v"), mutual_information(xa, f).sel(factor="v"))
    assert mix.attrs["estimator"].startswith("gcmi mixture")
    xr.testing.assert_allclose(mutual_information(xa.chunk({"unit": 1}), f, estimator="mixture").compute(), mix,
                               rtol=0, atol=1e-12)
    with pytest.raises(InputError, match="estimator='mixture' has no permutation statistics"):
        mutual_information(xa, f, estimator="mixture", n_perm=10)
    with pytest.raises(InputError, match="estimator='kde'"):
        mutual_information(xa, f, estimator="kde")
