"""Issue 14: every degenerate input answered clearly, constant variables, and conditional permutations.

Each test names the defect it pins (numbered as in the issue); each failed on the main of 2026-12-03.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import gcmi_oracle as oracle
from infodissect.info import cmi_ggg, ent_g, mi_gg, mi_gg_pairs, mi_model_gd
from infodissect.info.xr import InputError, mutual_information


def _x(a: np.ndarray) -> xr.DataArray:
    return xr.DataArray(a, dims=("sample", "unit"))


@pytest.mark.parametrize("offset", [1e4, 1e6, 1e8])
def test_1_model_gd_on_raw_well_separated_classes_keeps_its_precision(offset):
    rng = np.random.default_rng(0)
    n = 600
    labels = np.repeat(np.arange(3), n // 3)
    x = labels * offset + rng.normal(size=n)  # classes far apart relative to their spread
    want = oracle.mi_model_gd(x, labels, 3)
    for xx in (x[:, None], torch.from_numpy(x[:, None])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "constant" warning
            got = float(np.asarray(mi_model_gd(xx, labels))[0])
        assert got == pytest.approx(want, abs=1e-9 * max(1.0, abs(want)))


def test_2_singular_covariances_are_refused_by_name():
    rng = np.random.default_rng(1)
    x, y, z = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 5, 1)), rng.normal(size=(3, 5, 1))
    for bias in (False, True):
        with pytest.raises(ValueError, match="mi_gg: x and y: 3 samples for 3 dimensions"):
            mi_gg(x, y, biascorrect=bias)
        with pytest.raises(ValueError, match="cmi_ggg: x, y and z: 3 samples for 4 dimensions"):
            cmi_ggg(x, y, z, biascorrect=bias)
        with pytest.raises(ValueError, match="ent_g: x: 2 samples for 2 dimensions"):
            ent_g(x[:2], biascorrect=bias)


def test_3_float16_is_accepted_everywhere():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 3)).astype(np.float16)
    labels = rng.integers(0, 4, 400)
    want = mi_model_gd(x.astype(np.float32), labels)
    np.testing.assert_allclose(mi_model_gd(x, labels), want, atol=1e-6)
    np.testing.assert_allclose(mi_model_gd(torch.from_numpy(x), labels).numpy(), want, atol=1e-6)
    np.testing.assert_allclose(mi_gg_pairs(x, x[:, :1]), mi_gg_pairs(x.astype(np.float32), x[:, :1].astype(np.float32)),
                               atol=1e-6)
    f = xr.Dataset({"c": ("sample", labels), "v": ("sample", rng.normal(size=400))})
    xr.testing.assert_allclose(mutual_information(_x(x), f), mutual_information(_x(x.astype(np.float32)), f))


def test_4_small_condition_classes_are_named_and_all_small_is_an_error():
    rng = np.random.default_rng(3)
    n = 300
    x, f = _x(rng.normal(size=(n, 2))), xr.Dataset({"v": ("sample", rng.normal(size=n))})
    cond = rng.integers(0, 3, n)
    cond[:2] = 7  # a stratum of 2 samples
    with pytest.warns(RuntimeWarning, match=r"1 of 4 strata with 2 sample\(s\) or fewer left out \(strata \[3\], 2 "):
        mutual_information(x, f, cond=xr.DataArray(cond, dims="sample", name="c"))
    with pytest.raises(InputError, match="every stratum has 2 sample"):
        mutual_information(x, f, cond=xr.DataArray(np.arange(n) // 2, dims="sample"))


def test_5_two_dimensional_conditions():
    rng = np.random.default_rng(4)
    n = 500
    z = rng.normal(size=(n, 2))
    x = _x(z @ [[1.0], [1.0]] + rng.normal(size=(n, 1)))
    f = xr.Dataset({"v": ("sample", z.sum(1) + rng.normal(size=n))})
    two = mutual_information(x, f, cond=xr.DataArray(z, dims=("sample", "k")))
    both = mutual_information(x, f, cond=xr.Dataset({"a": ("sample", z[:, 0]), "b": ("sample", z[:, 1])}))
    xr.testing.assert_allclose(two, both, atol=1e-12)
    cx, cy, cz = oracle.copnorm(x.values[:, 0]), oracle.copnorm(f.v.values), oracle.copnorm(z)
    assert float(two.squeeze()) == pytest.approx(oracle.cmi_ggg(cx, cy, cz), abs=1e-9)
    with pytest.raises(InputError, match="2-D and discrete"):
        mutual_information(x, f, cond=xr.DataArray(rng.integers(0, 2, (n, 2)), dims=("sample", "k")))
    with pytest.raises(InputError, match=r"cond 'c' has dims \('k', 'j'\)"):
        mutual_information(x, f, cond=xr.DataArray(z[:2], dims=("k", "j"), name="c"))


def test_6_conditional_permutations_control_the_family_wise_error_rate():
    """x and the factors all depend on the condition, and on nothing else: under permutation within strata
    (discrete) or of the residuals (continuous), the rejection rate is alpha within 2 standard errors."""
    rng = np.random.default_rng(5)
    n, units, runs, alpha = 240, 12, 60, 0.1
    rejected = {("strata", "v"): 0, ("strata", "g"): 0, ("continuous", "v"): 0}  # thresholds are per factor
    for run in range(runs):
        c = rng.integers(0, 3, n)
        z = rng.normal(size=n)
        for kind, drive in (("strata", c - 1.0), ("continuous", z)):
            x = _x(drive[:, None] + rng.normal(size=(n, units)))
            f = xr.Dataset({"v": ("sample", drive + rng.normal(size=n))}
                           | ({"g": ("sample", (drive + rng.normal(size=n) > 0).astype(int))} if kind == "strata" else {}))
            cond = xr.DataArray(c if kind == "strata" else z, dims="sample", name=kind)
            res = mutual_information(x, f, cond=cond, n_perm=39, alpha=alpha, seed=run)
            for factor in res.factor.values:
                rejected[kind, str(factor)] += bool(res.significant.sel(factor=factor).any())
    se = np.sqrt(alpha * (1 - alpha) / runs)
    for kind, count in rejected.items():
        assert abs(count / runs - alpha) <= 2 * se + 1e-12, (kind, count / runs)
    # ... and the effect is found when there is one
    x = _x(np.stack([c - 1.0 + 0.5 * f.v.values, c - 1.0], 1) + rng.normal(size=(n, 2)))
    res = mutual_information(x, f[["v"]], cond=xr.DataArray(c, dims="sample"), n_perm=99)
    assert res.significant.values[:, 0].tolist() == [True, False]


def test_6_conditional_observed_values_equal_the_lazy_path_and_gcmi():
    rng = np.random.default_rng(6)
    n = 400
    x = _x(rng.gamma(2.0, size=(n, 3)))
    f = xr.Dataset({"v": ("sample", x.values[:, 0] + rng.normal(size=n))})
    c = rng.integers(0, 3, n)
    res = mutual_information(x, f, cond=xr.DataArray(c, dims="sample"), n_perm=20)
    want = [oracle.gccmi_ccd(x.values[:, u], f.v.values, c, 3) for u in range(3)]
    np.testing.assert_allclose(res["mi"].sel(factor="v"), want, atol=1e-9)
    lazy = mutual_information(x.chunk({"unit": 1}), f, cond=xr.DataArray(c, dims="sample")).compute()
    xr.testing.assert_allclose(lazy, res["mi"], atol=1e-12)
    with pytest.raises(InputError, match="no exact scheme"):
        mutual_information(x, f.assign(g=("sample", c)), cond=xr.DataArray(rng.normal(size=n), dims="sample"),
                           n_perm=10)


def test_7_errors_name_the_argument_and_the_factor():
    rng = np.random.default_rng(7)
    n = 50
    x = _x(rng.normal(size=(n, 2)))
    with pytest.raises(ValueError, match="x has 50, y has 40"):
        mi_gg_pairs(x.values, rng.normal(size=(40, 1)))
    with pytest.raises(ValueError, match="x has 50, labels has 49"):
        mi_model_gd(x.values, np.zeros(49))
    expr = np.array(["happy", "sad"] * 25, dtype=object)
    expr[3] = None
    with pytest.raises(InputError, match=r"factor 'expression' has missing values \(None or NaN\) at 1 sample"):
        mutual_information(x, xr.Dataset({"expression": ("sample", expr)}))
    ident = rng.integers(0, 3, n).astype(float)
    ident[[5, 9]] = np.nan
    with pytest.raises(InputError, match="factor 'identity' has missing values .* at 2 sample.*first at position 5"):
        mutual_information(x, xr.Dataset({"identity": ("sample", ident, {"kind": "categorical"})}))
    with pytest.raises(InputError, match="x has 0 sample"):
        mutual_information(x.isel(sample=slice(0, 0)), xr.Dataset({"v": ("sample", np.zeros(0))}))
    with pytest.raises(InputError, match="n_perm=-5"):
        mutual_information(x, xr.Dataset({"v": ("sample", rng.normal(size=n))}), n_perm=-5)
    with pytest.raises(InputError, match="alpha=2"):
        mutual_information(x, xr.Dataset({"v": ("sample", rng.normal(size=n))}), n_perm=5, alpha=2)
    with pytest.raises(InputError, match="y holds no factors"):
        mutual_information(x, xr.Dataset())
    with pytest.warns(RuntimeWarning, match="ent_g: 1 value"):
        h = ent_g(np.ones((20, 1, 1)))
    assert np.isnan(h).all()


def test_constant_units_keep_the_family_wise_error_rate_and_are_reported():
    """Issue 14: 500 all-zero units among a layer were all significant together in 3 of 20 seeds."""
    rng = np.random.default_rng(8)
    n, alpha, runs = 200, 0.1, 30
    false = 0
    for run in range(runs):
        yaw = rng.normal(size=n)
        live = np.maximum(rng.normal(size=(n, 20)) + np.outer(yaw, np.r_[np.ones(5), np.zeros(15)]), 0)
        x = _x(np.concatenate([live, np.zeros((n, 500))], 1))
        f = xr.Dataset({"yaw": ("sample", yaw), "identity": ("sample", rng.integers(0, 10, n))})
        with pytest.warns(RuntimeWarning, match="500 of 520 variable"):
            res = mutual_information(x.chunk({"unit": 64}), f, n_perm=39, alpha=alpha, seed=run)
        assert res.constant.values.tolist() == [False] * 20 + [True] * 500
        assert (res["mi"].values[20:] == 0).all() and (res.pvalue.values[20:] == 1).all()
        assert res.significant.sel(factor="yaw").values[:5].all()
        false += bool(res.significant.sel(factor="identity").any() | res.significant.sel(factor="yaw")[5:].any())
    assert false / runs <= alpha + 2 * np.sqrt(alpha * (1 - alpha) / runs)


def test_identical_variables_are_tie_broken_independently():
    """Two dead-but-one-spike units with the same values: the same MI before issue 14 (ties hashed by value)."""
    rng = np.random.default_rng(9)
    n = 300
    unit = np.where(rng.random(n) < 0.8, 0.0, 1.0)
    x = _x(np.stack([unit, unit], 1))
    f = xr.Dataset({"v": ("sample", rng.normal(size=n))})
    mi = mutual_information(x, f)
    assert mi.values[0, 0] != mi.values[1, 0]
    # ... and each one's value does not depend on the chunking
    xr.testing.assert_equal(mutual_information(x.chunk({"unit": 1}), f).compute(), mi)
