"""Figure of factor visibility: pixel MI per factor, and the accuracy of each classifier trained on a factor."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib import patheffects  # noqa: E402

_FLOOR = 1e-3  # bits: smaller MI (and bias-corrected values below 0) are drawn at this floor of the log axis
_COLOURS = {"held-out": "tab:green", "test": "tab:olive"}


def _rows(ds: xr.Dataset) -> list[str]:
    """One row per measured factor, then one per classifier task whose pixels were not measured."""
    factors = [str(f) for f in ds["factor"].values]
    return factors + [t for t in dict.fromkeys(str(t) for t in ds["task"].values) if t not in factors]


def visibility_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """One row per factor, three panels: the largest pixel MI with its permutation threshold (bits, log
    axis), the share of pixel positions above the threshold, and the accuracy of every classifier trained
    on that factor next to its chance level."""
    rows = _rows(ds)
    factors = [str(f) for f in ds["factor"].values]
    intrinsic = dict(zip(factors, ds["intrinsic"].values.tolist()))
    fig, (ax_mi, ax_share, ax_acc) = plt.subplots(
        1, 3, figsize=(17, 1.6 + 0.34 * max(len(rows), 3)), sharey=True, constrained_layout=True,
        gridspec_kw={"width_ratios": [1.2, 0.9, 1.3]})
    pos = {name: i for i, name in enumerate(rows)}
    if factors:
        y = np.asarray([pos[f] for f in factors])
        mi = np.clip(np.nan_to_num(ds["max_mi"].values, nan=0.0), _FLOOR, None)
        above = ds["share_significant"].values > 0
        ax_mi.barh(y, mi, height=0.7, color=np.where(above, "tab:blue", "lightgrey"))
        ax_mi.scatter(ds["threshold"].values, y, marker="|", s=180, color="black", zorder=3)
        ax_mi.set_xscale("log")
        ax_mi.set_xlim(left=_FLOOR)
        ax_share.barh(y, 100 * ds["share_significant"].values, height=0.7, color="tab:blue")
    else:
        ax_mi.text(0.5, 0.5, "pixels not measured\n(mi.pixels: false)", ha="center", va="center",
                   transform=ax_mi.transAxes)
    ax_mi.set(xlabel="largest MI of any pixel with the factor (bars) and its permutation\n"
                     "threshold (black tick), in bits (log scale)",
              title="information in the pixels\n(grey: no pixel above the threshold)")
    ax_share.set(xlim=(0, 100), xlabel="pixel positions above the threshold (%)",
                 title="where the factor shows\n(share of the image)")
    given = dict(zip(factors, (str(g) for g in ds["given"].values))) if "given" in ds.coords else {}
    labels = [(f"{r} | {given[r]}" if given.get(r) else r) + (" *" if intrinsic.get(r) else "")
              if r in intrinsic else f"{r} (pixels not measured)" for r in rows]
    ax_mi.set_yticks(range(len(rows)), labels)
    ax_mi.set_ylim(len(rows) - 0.5, -0.5)
    models = [str(m) for m in ds["model"].values]
    tasks = [str(t) for t in ds["task"].values]
    for task in dict.fromkeys(tasks):
        mine = [i for i, t in enumerate(tasks) if t == task]
        height = 0.8 / len(mine)
        for k, i in enumerate(mine):
            yy = pos[task] - 0.4 + height * (k + 0.5)
            where = str(ds["evaluated_on"].values[i])
            acc, chance = 100 * float(ds["accuracy"].values[i]), 100 * float(ds["chance"].values[i])
            ax_acc.barh(yy, acc, height=height * 0.9, color=_COLOURS["held-out" if "held-out" in where else "test"])
            ax_acc.plot([chance, chance], [yy - height * 0.45, yy + height * 0.45], color="black", linewidth=2)
            label = f"{models[i]}: {acc:.0f}% (chance {chance:.0f}%)"
            right = max(acc, chance) + 1.5
            if "held-out" in where:  # the same classifier on new pictures of the people it was trained on
                test = 100 * float(ds["test_accuracy"].values[i])
                ax_acc.plot(test, yy, marker="D", markersize=6, color="black", markeredgecolor="white", zorder=4)
                label += f"; test set {test:.0f}%"
                right = max(right, test + 2.5)
            width = 0.95 * len(label)  # about 1% of the axis per character at fontsize 8
            inside = right + width > 100  # right of the marks if it fits, else over the bar, clear of chance
            x = (chance + 1.5 if chance < 35 else 2) if inside else right
            # White with a dark outline: readable over the bar and past its end.
            effects = [patheffects.withStroke(linewidth=2.2, foreground="0.15")] if inside else None
            ax_acc.text(x, yy, label, va="center", fontsize=8, color="white" if inside else "black",
                        path_effects=effects)
    if not models:
        ax_acc.text(0.5, 0.5, "no trained models", ha="center", va="center", transform=ax_acc.transAxes)
    fig.legend(handles=[Patch(color=_COLOURS["held-out"], label="classifier accuracy on held-out identities"),
                        Patch(color=_COLOURS["test"], label="on the test set (training identities)"),
                        plt.Line2D([], [], color="black", linewidth=2, label="its chance (most frequent class)"),
                        plt.Line2D([], [], color="black", marker="D", markeredgecolor="white", linestyle="",
                                   label="held-out classifier on the test set (the people it was trained on)")],
               loc="outside lower right", ncols=4, fontsize=8)
    ax_acc.set(xlim=(0, 100), xlabel="accuracy (%)", title="classifier trained on the factor\n(by the pipeline)")
    for ax in (ax_mi, ax_share, ax_acc):
        ax.grid(axis="x", alpha=0.3)
    on = f" on the {ds.attrs['set']} set ({ds.attrs.get('n_samples', '?')} images)" if "set" in ds.attrs else ""
    cond = "; a | b: a given b (its information within each level of b)" if any(given.values()) else ""
    fig.suptitle(title or f"factor visibility{on}; * intrinsic factor (of the person){cond}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
