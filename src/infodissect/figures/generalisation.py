"""Figure of the generalisation test: the network's response along shape, texture and joint morphs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

COLOURS = {"shape": "tab:blue", "texture": "tab:red", "both": "tab:purple"}


def _curve(ax: plt.Axes, summary: xr.Dataset, var: str, **kw) -> None:
    for kind in summary["morph_type"].values:
        s = summary.sel(morph_type=kind)
        x, y = s["morph_level"].values, s[var].values
        err = np.nan_to_num(s[f"{var}_sem"].values) * 1.96
        ax.plot(x, y, marker="o", color=COLOURS.get(str(kind), "k"), label=f"{kind}", **kw)
        ax.fill_between(x, y - err, y + err, color=COLOURS.get(str(kind), "k"), alpha=0.15)


def generalisation_figure(summary: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Three panels: P(original identity), which identity is picked, and the per-pair tolerance."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    ax = axes[0]
    _curve(ax, summary, "p_original")
    ax.set(xlabel="morph level (0 = original A, 1 = other identity B)", ylabel="P(original identity A)",
           ylim=(-0.02, 1.02), title="network's probability of the original identity")
    ax.axvspan(0, 1, color="grey", alpha=0.06)
    ax.legend(title="identity code changed")
    ax = axes[1]
    _curve(ax, summary, "picks_original")
    for kind in summary["morph_type"].values:
        s = summary.sel(morph_type=kind)
        ax.plot(s["morph_level"].values, s["picks_target"].values, linestyle="--", marker="x",
                color=COLOURS.get(str(kind), "k"))
    ax.set(xlabel="morph level", ylabel="share of morphs", ylim=(-0.02, 1.02),
           title="picks A (solid) or B (dashed)")
    ax = axes[2]
    tol = summary["tolerance"]
    kinds = [str(k) for k in tol["morph_type"].values]
    jitter = np.linspace(-0.15, 0.15, tol.sizes["pair"])  # one offset per pair, the same in every column
    for i, kind in enumerate(kinds):
        v = tol.sel(morph_type=kind).values
        ax.scatter(i + jitter, v, color=COLOURS.get(kind, "k"), alpha=0.7)
        ax.bar(i, np.nanmean(v), color=COLOURS.get(kind, "k"), alpha=0.25, width=0.6)
    if "shape" in kinds and "texture" in kinds:
        a, b = tol.sel(morph_type="shape").values, tol.sel(morph_type="texture").values
        i, j = kinds.index("shape"), kinds.index("texture")
        for p in range(len(a)):
            ax.plot([i + jitter[p], j + jitter[p]], [a[p], b[p]], color="grey", lw=0.5, alpha=0.5)
    ax.set_xticks(range(len(kinds)), kinds)
    gap, p = summary.attrs.get("shape_minus_texture_tolerance"), summary.attrs.get("p_value")
    text = f"shape - texture = {gap:+.2f}, p = {p:.3g} (sign-flip, {summary.attrs.get('n_pairs')} pairs)" \
        if gap is not None else ""
    ax.set(ylabel="tolerance: mean P(A) over levels in (0, 1]", ylim=(-0.02, 1.02), xlabel="identity code changed",
           title=f"tolerance per pair\n{text}")
    fig.suptitle(title or "generalisation under shape vs texture change")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
