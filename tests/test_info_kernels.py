"""The MI kernels against a per-pair oracle written from the published formulas, and against analytic MI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import gcmi_oracle as oracle
from infodissect.info import cmi_ggg, coinfo_ggg, copnorm, ent_g, mi_gg, mi_gg_pairs, mi_model_gd
from infodissect.info.xr import mutual_information

TOL = 1e-9


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(2017)


def _mixed(rng, n: int, *dims: int) -> np.ndarray:
    """Correlated, non-Gaussian data (n, *dims), copula-normalised as the kernels expect."""
    z = rng.normal(size=(n, 1) + (1,) * (len(dims) - 1))
    return copnorm(np.exp(0.5 * rng.normal(size=(n, *dims)) + 0.7 * z))


def test_copnorm_matches_the_reference_on_tie_free_data(rng):
    x = rng.gamma(2.0, size=(301, 5))
    np.testing.assert_allclose(copnorm(x), oracle.copnorm(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_mi_gg_pairs_matches_the_oracle(rng, bias):
    x, y = _mixed(rng, 250, 7), _mixed(rng, 250, 3)
    got = mi_gg_pairs(x, y, bias)
    want = np.array([[oracle.mi_gg(x[:, p], y[:, q], bias) for q in range(3)] for p in range(7)])
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dx,dy", [(1, 1), (3, 1), (2, 4)])
def test_multivariate_mi_gg_matches_the_oracle(rng, bias, dx, dy):
    x, y = _mixed(rng, 180, 5, dx), _mixed(rng, 180, 5, dy)
    got = mi_gg(x, y, bias)
    want = [oracle.mi_gg(x[:, b], y[:, b], bias) for b in range(5)]
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d", [1, 3])
def test_mi_model_gd_matches_the_oracle(rng, bias, d):
    n, k = 400, 6
    labels = rng.integers(0, k, n)
    x = copnorm(rng.normal(size=(n, 9, d)) + 0.3 * labels[:, None, None] * rng.normal(size=(1, 9, d)))
    got = mi_model_gd(x if d > 1 else x[..., 0], labels, bias)
    want = [oracle.mi_model_gd(x[:, v], labels, k, bias) for v in range(9)]
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_entropy_conditional_mi_and_coinformation_match_the_oracle(rng, bias):
    x, y, z = _mixed(rng, 300, 4, 2), _mixed(rng, 300, 4, 1), _mixed(rng, 300, 4, 2)
    np.testing.assert_allclose(ent_g(x, bias), [oracle.ent_g(x[:, b], bias) for b in range(4)], rtol=0, atol=TOL)
    np.testing.assert_allclose(cmi_ggg(x, y, z, bias), [oracle.cmi_ggg(x[:, b], y[:, b], z[:, b], bias)
                                                        for b in range(4)], rtol=0, atol=TOL)
    np.testing.assert_allclose(coinfo_ggg(x, y, z, bias), [oracle.coinfo_ggg(x[:, b], y[:, b], z[:, b], bias)
                                                           for b in range(4)], rtol=0, atol=TOL)


def test_front_matches_gcmi_including_conditioning(rng):
    n = 600
    raw = rng.gamma(2.0, size=(n, 4)) + rng.normal(size=(n, 1))
    f = xr.Dataset({"speed": ("sample", raw[:, 0] * 2 + rng.normal(size=n)),
                    "kind": ("sample", rng.integers(0, 3, n))})
    x = xr.DataArray(raw, dims=("sample", "unit"))
    mi = mutual_information(x, f)
    want_c = [oracle.gcmi_cc(raw[:, u], f.speed.values) for u in range(4)]
    want_d = [oracle.gcmi_model_cd(raw[:, u], f.kind.values, 3) for u in range(4)]
    np.testing.assert_allclose(mi.sel(factor="speed"), want_c, rtol=0, atol=TOL)
    np.testing.assert_allclose(mi.sel(factor="kind"), want_d, rtol=0, atol=TOL)
    # Conditioned on a discrete variable: gcmi's gccmi_ccd (copula within each class).
    zc = rng.integers(0, 3, n)
    got = mutual_information(x, f[["speed"]], cond=xr.DataArray(zc, dims="sample"))
    want = [oracle.gccmi_ccd(raw[:, u], f.speed.values, zc, 3) for u in range(4)]
    np.testing.assert_allclose(got.sel(factor="speed"), want, rtol=0, atol=TOL)
    # Conditioned on a continuous variable: cmi_ggg on copula-normalised data.
    zz = raw[:, 1] + rng.normal(size=n)
    got = mutual_information(x, f[["speed"]], cond=xr.DataArray(zz, dims="sample"))
    cx, cy, cz = oracle.copnorm(raw), oracle.copnorm(f.speed.values), oracle.copnorm(zz)
    want = [oracle.cmi_ggg(cx[:, u], cy, cz) for u in range(4)]
    np.testing.assert_allclose(got.sel(factor="speed"), want, rtol=0, atol=TOL)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.6, 0.9])
def test_univariate_gaussian_mi_is_the_analytic_value(rho):
    rng = np.random.default_rng(int(rho * 10))
    n = 100_000
    x = rng.normal(size=n)
    y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=n)
    got = mi_gg_pairs(copnorm(x[:, None]), copnorm(np.exp(y)[:, None])).item()  # monotone transform: same MI
    # Sampling sd of the estimate is ~0.003 bits at n = 100,000.
    assert abs(got - oracle.mi_gaussian_analytic(rho)) < 0.012


def test_multivariate_gaussian_mi_is_the_analytic_value():
    rng = np.random.default_rng(11)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + 5 * np.eye(5)
    data = rng.multivariate_normal(np.zeros(5), cov, size=100_000)
    got = mi_gg(data[:, None, :2], data[:, None, 2:]).item()
    assert abs(got - oracle.mi_gaussian_analytic_cov(cov, 2)) < 0.012


def test_numpy_and_torch_backends_agree(rng):
    x, y = _mixed(rng, 500, 6, 2), _mixed(rng, 500, 6, 1)
    labels = rng.integers(0, 4, 500)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-6)):
        t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
        pairs = [
            (mi_gg_pairs(x[..., 0], y[..., 0]), mi_gg_pairs(t(x[..., 0]), t(y[..., 0]))),
            (mi_gg(x, y), mi_gg(t(x), t(y))),
            (mi_model_gd(x[..., 0], labels), mi_model_gd(t(x[..., 0]), labels)),
            (mi_model_gd(x, labels), mi_model_gd(t(x), labels)),
            (cmi_ggg(x[..., :1], y, x[..., 1:]), cmi_ggg(t(x[..., :1]), t(y), t(x[..., 1:]))),
            (copnorm(x), copnorm(t(x))),
        ]
        for want, got in pairs:
            assert isinstance(got, torch.Tensor) and got.dtype == dtype
            np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=tol)


@pytest.mark.parametrize("kind", ["relu32", "uint8", "float16", "float64_exact", "float64", "int64", "nan"])
def test_compiled_cpu_ranking_gives_the_sort_ranks(rng, kind):
    """The CPU radix sort (compiled) ranks exactly as PyTorch's sort of the same unique keys."""
    from infodissect.info import copula

    n = 3001
    x = {"relu32": np.maximum(rng.normal(size=(n, 40)) - 0.8, 0).astype(np.float32),
         "uint8": rng.integers(0, 256, (n, 40)).astype(np.uint8),
         "float16": rng.normal(size=(n, 40)).astype(np.float16),
         "float64_exact": np.round(rng.normal(size=(n, 40)) * 8) / 8,
         "float64": np.concatenate([rng.normal(size=(n, 20)), np.round(rng.normal(size=(n, 20)))], 1),
         "int64": rng.integers(-3, 4, (n, 40)),
         "nan": np.where(rng.random((n, 40)) < 0.01, np.nan, rng.normal(size=(n, 40))).astype(np.float32)}[kind]
    rows, _ = copula._rows(x)
    expected = copula._rank_rows(rows, 7)  # PyTorch's sort
    got = copula._rank_rows_any(rows, 7)
    assert torch.equal(got, expected)
    assert torch.equal(torch.sort(got, 1).values, torch.arange(n).expand(rows.shape[0], n))
    ref = copula.normal_scores(n, torch.float64)[expected]
    out = copula._copnorm_cpu(rows, n, 7, torch.float64)
    if out is not None:  # float64 values float32 cannot hold take the PyTorch path
        assert torch.equal(out, ref)
    assert np.array_equal(copnorm(x, seed=7), copnorm(torch.as_tensor(x), seed=7).numpy(), equal_nan=True)
