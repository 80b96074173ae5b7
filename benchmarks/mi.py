"""Time the MI engine against frites on the same data, in the same run, for float32 and float64 input.

    pip install frites threadpoolctl   # (the `bench` extra)
    python benchmarks/mi.py [--threads 2] [--n 10000] [--perms 1000] [--full]

Workloads (n samples, all pairs), each on float32 and on float64 input:
  1. 2,000 ReLU-like units x 8 factors (5 continuous; discrete with 100, 2 and 7 classes):
     float32 as the activation stage stores them, and the same values cast to float64;
  2. 4,096 pixels x the same 8 factors: uint8 (heavy ties), and as float64 values float32
     cannot hold (the pixels plus a jitter below 0.01, tie-free);
  3. those pixels x 512 of the units (2.1 million MI(pixel; unit) pairs), each in both dtypes;
  4. maximum-statistic permutations (--perms) for workload 1.
frites runs its vectorised nd functions (copnorm_nd, mi_nd_gg, mi_model_nd_gd). In
workload 3 frites needs a Python loop over units; without --full it runs 16 units and
the time is scaled to 512 ("~" before the time). In workload 4 frites' time is its
workload-1 time plus, per permutation, the MI of the copula-normalised data with the
permuted factors (as its maximum-statistic workflow does), timed on 2 permutations and
scaled. gcmi's numba batch path (copnorm_slice_numba, info_cc_slice_numba,
info_c1d_slice_numba) runs too when `gcmi` (github.com/robince/gcmi, not on PyPI) is
importable.
Prints, per workload and dtype, seconds, the speed-up and the largest absolute
difference from frites in bits. frites breaks no ties (its ranks follow argsort's
order), so on tied data (units, uint8 pixels) the difference is the tie treatment's;
on tie-free data it is rounding.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xarray as xr

from infodissect.info import copnorm, mi_gg_pairs
from infodissect.info.xr import mutual_information


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, xr.Dataset]:
    """ReLU-like float32 units (n, 2000), uint8 pixels (n, 4096) and 8 factors."""
    rng = np.random.default_rng(seed)
    cont = rng.normal(size=(n, 5))
    disc = [rng.integers(0, k, n) for k in (100, 2, 7)]
    w = rng.normal(size=(5, 2000)) * 0.3
    drive = cont @ w + 0.2 * disc[1][:, None] + 0.05 * (disc[2][:, None] - 3)
    # float32, as the activation stage stores them; ~60% exact zeros
    units = np.maximum(drive + rng.normal(size=(n, 2000)) - 0.5, 0.0).astype(np.float32)
    pix = np.clip(128 + 40 * (cont[:, :1] @ rng.normal(size=(1, 4096))) * 0.3 + rng.normal(scale=30, size=(n, 4096)),
                  0, 255).astype(np.uint8)
    factors = xr.Dataset({f"c{i}": ("sample", cont[:, i]) for i in range(5)}
                         | {f"d{k}": ("sample", d) for k, d in zip((100, 2, 7), disc)})
    return units, pix, factors


def jittered(pix: np.ndarray, seed: int = 1) -> np.ndarray:
    """float64 pixels plus a jitter in (0.001, 0.01): values float32 cannot hold exactly, (almost surely) no ties."""
    return pix + np.random.default_rng(seed).uniform(0.001, 0.01, pix.shape)


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def frites_copnorm(x: np.ndarray) -> np.ndarray:
    """frites' copnorm_nd of x (n, P) as (P, 1, n) float64."""
    from frites.core import copnorm_nd

    return copnorm_nd(np.ascontiguousarray(x.T, dtype=np.float64), axis=-1)[:, None, :]


def frites_mi(xc: np.ndarray, factors: xr.Dataset, perm: np.ndarray | None = None) -> np.ndarray:
    """frites' MI of copula-normalised xc (P, 1, n) with every factor (samples permuted by ``perm``): (P, Q)."""
    from frites.core import copnorm_nd, mi_model_nd_gd, mi_nd_gg

    out = []
    for name in factors.data_vars:
        v = factors[name].values
        if v.dtype.kind in "iub":
            out.append(mi_model_nd_gd(xc, v if perm is None else v[perm], traxis=-1, mvaxis=-2))
        else:
            yc = copnorm_nd(v.astype(np.float64), axis=-1)
            yc = yc if perm is None else yc[perm]
            out.append(mi_nd_gg(xc, np.broadcast_to(yc, xc.shape), traxis=-1, mvaxis=-2))
    return np.stack(out, -1)


def frites_factors(x: np.ndarray, factors: xr.Dataset) -> np.ndarray:
    """frites' vectorised path: x (n, P) against every factor: (P, Q)."""
    return frites_mi(frites_copnorm(x), factors)


def ours_factors(x: np.ndarray, factors: xr.Dataset) -> np.ndarray:
    """infodissect's labelled front on in-memory data: (P, Q)."""
    return mutual_information(xr.DataArray(x, dims=("sample", "unit")), factors).values


def frites_pairs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """frites: every column of x (n, P) against every column of y (n, Q), a loop over y's columns."""
    from frites.core import copnorm_nd, mi_nd_gg

    xc = frites_copnorm(x)
    yc = copnorm_nd(np.ascontiguousarray(y.T, dtype=np.float64), axis=-1)
    return np.stack([mi_nd_gg(xc, np.broadcast_to(yc[q], xc.shape), traxis=-1, mvaxis=-2) for q in range(y.shape[1])], -1)


def ours_pairs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """infodissect: every column of x (n, P) against every column of y (n, Q): (P, Q)."""
    return mi_gg_pairs(copnorm(x), copnorm(y))


def frites_perms(x: np.ndarray, factors: xr.Dataset, n_perm: int, timed_perms: int = 2) -> float:
    """frites' maximum-statistic time: MI once, then per permutation the MI with permuted factors
    (timed on ``timed_perms``, scaled to ``n_perm``)."""
    xc = frites_copnorm(x)
    t0 = time.perf_counter()
    frites_mi(xc, factors)
    rng = np.random.default_rng(0)
    t1 = time.perf_counter()
    for _ in range(timed_perms):
        frites_mi(xc, factors, rng.permutation(x.shape[0])).max(0)
    t2 = time.perf_counter()
    return (t1 - t0) + (t2 - t1) * n_perm / timed_perms


def gcmi_factors(x: np.ndarray, factors: xr.Dataset) -> np.ndarray:
    """gcmi's numba batch path (robince/gcmi, python/src/gcmi/_numba.py): (P, Q)."""
    from gcmi._numba import (_shared_continuous_stats, copnorm_slice_numba, info_c1d_slice_numba,
                             info_cc_slice_numba)

    xc = copnorm_slice_numba(np.ascontiguousarray(x.T, dtype=np.float64))
    out = []
    for name in factors.data_vars:
        v = factors[name].values
        if v.dtype.kind in "iub":
            out.append(info_c1d_slice_numba(xc, v.astype(np.int64), np.bincount(v).astype(np.int64), True))
        else:
            yc = copnorm_slice_numba(v.astype(np.float64)[None])
            cov_y, hy = _shared_continuous_stats(yc, True, False)
            out.append(info_cc_slice_numba(xc[:, None, :], yc, cov_y, hy, True, False))
    return np.stack(out, -1)


def have_gcmi() -> bool:
    try:
        import gcmi._numba  # noqa: F401
    except ImportError:
        return False
    return True


def maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference, NaN pairs (constant variables) left out."""
    return float(np.nanmax(np.abs(a - b)))


def header() -> None:
    print(f"{'workload':<34} {'input':<16} {'ours s':>8} {'frites s':>10} {'speed-up':>9} {'max |diff| bits':>16}",
          flush=True)


def report(name: str, kind: str, t_ours: float, t_frites: float, diff: float | None, scaled: bool = False) -> None:
    """One row of the table; ``scaled`` marks an extrapolated frites time (~)."""
    d = "n/a" if diff is None else f"{diff:.1e}"
    tf = ("~" if scaled else "") + f"{t_frites:.2f}"
    print(f"{name:<34} {kind:<16} {t_ours:8.2f} {tf:>10} {t_frites / t_ours:8.1f}x {d:>16}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--perms", type=int, default=1000)
    ap.add_argument("--full", action="store_true", help="run frites on all 512 units in workload 3")
    a = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(a.threads)
    import torch

    torch.set_num_threads(a.threads)
    units, pix, factors = data(a.n)
    inputs = {"units": [("float32", units), ("float64", units.astype(np.float64))],
              "pixels": [("uint8", pix), ("float64+jitter", jittered(pix))]}
    print(f"n = {a.n}, {a.threads} threads; units {units.shape[1]} ({(units == 0).mean():.0%} zeros), "
          f"pixels {pix.shape[1]}, factors {list(factors.data_vars)}", flush=True)

    # Warm up both: compiled kernels load from Numba's cache (or compile, the first time).
    for arrays in inputs.values():
        for _, x in arrays:
            ours_factors(x[:, :8], factors)
            ours_pairs(x[:, :8], x[:, 8:12])
            frites_factors(x[:, :8], factors)
            frites_pairs(x[:, :8], x[:, 8:10])
    header()
    for label, key in (("1. 2000 units x 8 factors", "units"), ("2. 4096 pixels x 8 factors", "pixels")):
        for kind, x in inputs[key]:
            to, ro = timed(ours_factors, x, factors)
            tf, rf = timed(frites_factors, x, factors)
            report(label, kind, to, tf, maxdiff(ro, rf))
            print(f"   copnorm alone {timed(copnorm, x)[0]:.2f} s", flush=True)
            if have_gcmi():
                tg, _ = timed(gcmi_factors, x, factors)
                print(f"   gcmi numba batch path {tg:.2f} s; speed-up over it {tg / to:.1f}x", flush=True)

    sub = 512 if a.full else 16
    for (kind_p, p), (kind_u, u) in zip(inputs["pixels"], inputs["units"]):
        u = np.ascontiguousarray(u[:, :512])
        to, ro = timed(ours_pairs, p, u)
        tf, rf = timed(frites_pairs, p, u[:, :sub])
        report("3. 4096 pixels x 512 units", f"{kind_p}/{kind_u[-2:]}", to, tf * 512 / sub,
               maxdiff(ro[:, :sub], rf), not a.full)

    for kind, x in inputs["units"]:
        to, res = timed(mutual_information, xr.DataArray(x, dims=("sample", "unit")), factors, n_perm=a.perms)
        report(f"4. {a.perms} permutations, max stat", kind, to, frites_perms(x, factors, a.perms), None, True)
        print(f"   {int(res.significant.sum())} significant pairs; "
              f"thresholds {np.round(res.threshold.values, 4).tolist()}", flush=True)

    dense = np.ascontiguousarray(units[:, :200] + np.random.default_rng(1).normal(scale=1e-6, size=(a.n, 200)))
    print(f"agreement on tie-free units (200 units + 1e-6 noise): max |diff| "
          f"{np.abs(frites_factors(dense, factors) - ours_factors(dense, factors)).max():.1e} bits", flush=True)


if __name__ == "__main__":
    main()
