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
    assert torch.equal(copula._copnorm_cpu(rows, n, 7, torch.float64), ref)
    assert np.array_equal(copnorm(x, seed=7), copnorm(torch.as_tensor(x), seed=7).numpy(), equal_nan=True)


def _float64_rows(rng, kind: str, n: int) -> np.ndarray:
    """Adversarial float64 data (n, 6) for the compiled float64 ranking; none of it float32-exact throughout."""
    g = rng.normal(size=(n, 6))
    u = rng.random((n, 6))
    return {"zeros60": np.where(u < 0.6, 0.0, g),  # 60% exact zeros among float64-only values
            "clipped": np.maximum(g, -0.3),  # a large tie at the minimum (ranked apart from the rest)
            "signed_zeros": np.where(u < 0.3, 0.0, np.where(u < 0.6, -0.0, g)),
            "negative": -np.exp(g) - 0.1 * np.round(g),
            "inf": np.where(u < 0.1, np.inf, np.where(u < 0.2, -np.inf, np.where(u < 0.4, 1e300 * np.round(g), g))),
            "many_ties": np.round(g * 20) / 3 + 1e-9 * np.round(g),  # hundreds of small tied groups
            # values a few ulps apart: equal in the bits the radix packs, told apart by the bits it left out
            "near_ties": np.where(u < 0.6, 1.0 + 2.3e-16 * np.round(3 * g), g),
            "part_exact": np.where(u < 0.5, np.round(g * 4) / 4, g),  # half the values float32-exact
            "huge_int": (rng.integers(-2**40, 2**40, (n, 6)) // 4096 * 4097).astype(np.float64)}[kind]


@pytest.mark.parametrize("kind", ["zeros60", "clipped", "signed_zeros", "negative", "inf", "many_ties", "near_ties",
                                  "part_exact", "huge_int"])
def test_compiled_float64_ranking_gives_the_sort_ranks(rng, kind):
    """Rows float32 cannot hold rank by the compiled float64 sort exactly as PyTorch's two-stage sort."""
    from infodissect.info import copula

    n = 2003
    x = _float64_rows(rng, kind, n)
    rows, _ = copula._rows(x)
    assert not bool(copula._exact_rows(rows).any())
    ids = np.array([3, -7, 2**40, 0, 3, 99])
    for i in (None, ids):
        expected = copula._rank_rows(rows, 11, i)  # PyTorch's sort, then the tied groups by tie-breaker
        assert torch.equal(copula._rank_rows_any(rows, 11, i), expected)
    out = copula._copnorm_cpu(rows, n, 11, torch.float64, ids)
    assert torch.equal(out, copula.normal_scores(n, torch.float64)[copula._rank_rows(rows, 11, ids)])
    assert np.array_equal(copnorm(x, seed=11, ids=ids), copnorm(torch.as_tensor(x), seed=11, ids=ids).numpy())


@pytest.mark.parametrize("shape,make", [
    ((10_000, 3), lambda r, s: r.integers(0, 256, s).astype(np.uint8)),  # few values: the tie-breaker in the key
    ((2001, 3), lambda r, s: r.integers(0, 2, s).astype(np.float32)),
    # > 2^16 samples of wide values, some a few ulps apart: sorted on the whole key, carrying positions
    ((70_000, 2), lambda r, s: np.round(r.normal(size=s), 1) * (1 + 2.3e-16 * r.integers(0, 3, s)))])
def test_compiled_ranking_paths_give_the_sort_ranks(rng, shape, make):
    from infodissect.info import copula

    rows, _ = copula._rows(make(rng, shape))
    ids = np.arange(shape[1]) + 40
    assert torch.equal(copula._rank_rows_any(rows, 2, ids), copula._rank_rows(rows, 2, ids))


def test_compiled_float64_ranking_of_nan_rows_is_a_permutation(rng):
    from infodissect.info import copula

    n = 1001
    x = np.where(rng.random((n, 3)) < 0.05, np.nan, np.where(rng.random((n, 3)) < 0.5, 0.0, rng.normal(size=(n, 3))))
    x[:, 2] = rng.normal(size=n)
    rows, _ = copula._rows(x)
    got = copula._rank_rows_any(rows, 3)
    assert torch.equal(torch.sort(got, 1).values, torch.arange(n).expand(3, n))
    assert torch.equal(got[2], copula._rank_rows(rows, 3)[2])
    with pytest.warns(RuntimeWarning, match="NaN"):
        c = copnorm(x, seed=3)
    assert np.isnan(c[:, :2]).all() and np.isfinite(c[:, 2]).all()


def test_identical_variables_with_different_ids_break_ties_independently():
    from infodissect.info import ranks

    n = 4000
    x = np.zeros((n, 3))  # three dead units: all ties
    x[: n // 2, 2] = 1.0
    x = np.concatenate([x, x], 1)  # columns 3..5 repeat columns 0..2
    r = ranks(x, seed=5)
    for a, b in ((0, 1), (0, 3), (1, 4)):
        assert abs(np.corrcoef(r[:, a], r[:, b])[0, 1]) < 0.08, (a, b)  # sd of r under independence: 0.016
    assert abs(np.corrcoef(r[: n // 2, 2], r[: n // 2, 5])[0, 1]) < 0.12
    # Same values and same id: same ranks, alone or in any block, on either input library.
    for j in range(6):
        np.testing.assert_array_equal(ranks(x[:, j:j + 1], seed=5, ids=[j]), r[:, j:j + 1])
    np.testing.assert_array_equal(ranks(x[:, [1, 4]], seed=5, ids=[4, 1]), r[:, [4, 1]])
    np.testing.assert_array_equal(ranks(x[:, 3:], seed=5, ids=np.arange(3, 6)), r[:, 3:])
    np.testing.assert_array_equal(ranks(torch.from_numpy(x), seed=5).numpy(), r)
    cop = copnorm(x.T, seed=5, axis=-1, ids=np.arange(6).reshape(2, 3))  # ids in the variables' C order
    np.testing.assert_array_equal(cop, copnorm(x, seed=5).T)
    with pytest.raises(ValueError, match="ids has 2 entries; x has 6"):
        ranks(x, ids=[0, 1])


def test_ids_leave_tie_free_variables_alone_and_match_the_torch_tie_breakers():
    from infodissect.info import copula, ranks

    rng = np.random.default_rng(9)
    x = rng.normal(size=(500, 2))
    np.testing.assert_array_equal(ranks(x, ids=[10, 20]), ranks(x))
    tied = np.round(rng.normal(size=(500, 2)).astype(np.float32))
    rows, _ = copula._rows(tied)
    for ids in (None, [7, 2**50]):
        assert torch.equal(copula._rank_rows_any(rows, 1, ids), copula._rank_rows(rows, 1, ids))
    assert not np.array_equal(ranks(tied, ids=[0, 1]), ranks(tied, ids=[0, 2]))


@pytest.mark.parametrize("axis", [0, -1])
def test_copnorm_cat_is_copnorm_within_each_category(rng, axis):
    from infodissect.info import copnorm_cat

    n = 900
    labels = rng.choice(np.array(["a", "b", "c"]), n)
    x = np.maximum(rng.normal(size=(n, 5)) + (labels == "b")[:, None], 0)  # ties in every category
    x[:, 4] = np.round(rng.normal(size=n)).astype(np.float32)
    want = np.empty_like(x)
    for c in "abc":
        sel = labels == c
        want[sel] = copnorm(x[sel], seed=4)  # ranks 0..n_c-1 of the category, ndtri((r + 1) / (n_c + 1))
    arr = x if axis == 0 else np.ascontiguousarray(x.T)
    got = copnorm_cat(arr, labels, seed=4, axis=axis)
    np.testing.assert_array_equal(got if axis == 0 else got.T, want)
    codes = rng.permutation(3)[np.unique(labels, return_inverse=True)[1]]  # the same categories, as integers
    t = copnorm_cat(torch.from_numpy(arr), torch.as_tensor(codes), seed=4, axis=axis)
    np.testing.assert_array_equal(t.numpy(), got)
    ids = np.arange(10, 15)
    one = copnorm_cat(x[:, 2:3], labels, seed=4, ids=ids[2:3])
    np.testing.assert_array_equal(one, copnorm_cat(x, labels, seed=4, ids=ids)[:, 2:3])


def test_copnorm_cat_rejects_labels_that_do_not_fit():
    from infodissect.info import copnorm_cat

    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match=r"labels .*\(9 entries\), x has 10 samples"):
        copnorm_cat(x, np.zeros(9))
    with pytest.raises(ValueError, match=r"labels must be 1-D.*shape \(10, 1\)"):
        copnorm_cat(x, np.zeros((10, 1)))
