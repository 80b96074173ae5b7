"""Figure of the adversarial stage: attack success against budget, and example images with their perturbation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

_ROLE_STYLE = {"member": ("tab:blue", "-", 1.2), "ensemble": ("black", "-", 2.4), "transfer": ("tab:red", "--", 1.6)}


def adversarial_figure(ds: xr.Dataset, sources: np.ndarray, adversarial: np.ndarray, budget: int, out: str | Path,
                       title: str = "") -> None:
    """Left: share of images fooling each model against the budget (stored uint8 images; the ensemble's
    share before rounding dotted). Right: example source images, the perturbation at ``budget`` (amplified to
    the full range) and the adversarial images (``sources``, ``adversarial``: (K, H, W, C) uint8)."""
    k = len(sources)
    fig = plt.figure(figsize=(4.6 + 1.5 * k, 4.6))
    grid = fig.add_gridspec(3, k + 2, width_ratios=[3.2, 0.3] + [1.0] * k)
    ax = fig.add_subplot(grid[:, 0])
    budgets = ds["budget"].values
    for m, role in zip(ds["model"].values, ds["role"].values):
        colour, dash, width = _ROLE_STYLE[str(role)]
        ax.plot(budgets, 100 * ds["success"].sel(model=m).values, dash, color=colour, lw=width, marker="o",
                ms=3, label=f"{m} ({role})" if role != "ensemble" else "ensemble (attacked)")
    ax.plot(budgets, 100 * ds["success_unrounded"].sel(model="ensemble").values, ":", color="black", lw=1.2,
            label="ensemble, before uint8 rounding")
    kind = "targeted" if ds.attrs.get("targeted") else "untargeted"
    ax.set_xlabel("L-inf budget (1/255 of the display range)")
    ax.set_ylabel(f"{kind} attack success (% of {ds.attrs.get('samples', '')} images)")
    ax.set_ylim(-2, 102)
    ax.set_xticks(budgets)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    diff = adversarial.astype(np.int16) - sources.astype(np.int16)
    scale = max(int(np.abs(diff).max()), 1)
    rows = (("source", sources), (f"perturbation x{127 / scale:.0f}", (127 + diff * (127 / scale)).clip(0, 255)),
            (f"adversarial ({budget}/255)", adversarial))
    for r, (name, imgs) in enumerate(rows):
        for c in range(k):
            a = fig.add_subplot(grid[r, c + 2])
            img = np.asarray(imgs[c], dtype=np.uint8)
            a.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255,
                     interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if c == 0:
                a.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def consistency_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Per layer (x) and budget (colour): the units' median response correlation real vs adversarial, their mean
    top-k image overlap (chance dashed), their mean information about the true class on real (black) and
    adversarial images and about the attack's target (dashed), and the distance ratio."""
    layers = [str(n) for n in ds["layer"].values]
    x = np.arange(len(layers))
    budgets = ds["budget"].values
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(budgets)))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.2), sharex=True)
    (a, b), (c, d) = axes
    for colour, budget in zip(colours, budgets):
        sel = ds.sel(budget=budget)
        label = f"{int(budget)}/255"
        a.plot(x, sel["response_correlation"].median("unit", skipna=True), "o-", color=colour, label=label)
        b.plot(x, sel["topk_overlap"].mean("unit", skipna=True), "o-", color=colour, label=label)
        c.plot(x, sel["mi_true"].mean("unit", skipna=True), "o-", color=colour, label=f"true class, {label}")
        c.plot(x, sel["mi_target"].mean("unit", skipna=True), "s--", color=colour, ms=3, label=f"target, {label}")
        d.plot(x, sel["distance_ratio"], "o-", color=colour, label=label)
    c.plot(x, ds["mi_real"].isel(budget=0).mean("unit", skipna=True), "k-", lw=2, label="true class, real images")
    chance = ds["topk_overlap"].attrs.get("chance")
    if chance is not None:
        b.axhline(chance, color="0.5", ls="--", lw=1, label="chance")
    a.set_ylabel("unit response correlation, real vs adversarial\n(median over units)")
    b.set_ylabel(f"share of each unit's top {ds.attrs.get('topk', '')} images kept\n(mean over units)")
    c.set_ylabel("unit information (bits, mean over units)")
    d.set_ylabel("|f(adv) - f(real)| / |target centroid - f(real)|")
    a.set_ylim(-0.05, 1.05)
    b.set_ylim(-0.05, 1.05)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", title="L-inf budget" if ax is not c else None, title_fontsize=7)
    for ax in (c, d):
        ax.set_xticks(x)
        ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("layer")
    fig.suptitle(f"{title} ({ds.attrs.get('samples', '')} images)", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
