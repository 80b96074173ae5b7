"""Figure of the adversarial stage: attack success against budget, and example images with their perturbation."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

_ROLE_STYLE = {"member": ("tab:blue", "-", 1.2), "ensemble": ("black", "-", 2.4), "transfer": ("tab:red", "--", 1.6)}


def _layer_axis(ax: plt.Axes, layers: list[str]) -> None:
    """Label ``ax``'s x axis with the read-out layers, one tick each."""
    ax.set_xticks(np.arange(len(layers)))
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("layer")


def _save(fig: plt.Figure, out: str | Path, title: str, tight: bool = True) -> None:
    """Give ``fig`` its title, lay it out (``tight``: tight_layout, else a tight bounding box) and write it."""
    fig.suptitle(title, fontsize=10)
    if tight:
        fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches=None if tight else "tight")
    plt.close(fig)


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
    _save(fig, out, title)


def consistency_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Per layer (x) and budget (colour): the units' median response correlation real vs adversarial, their mean
    top-k image overlap (chance dashed), their mean information about the true class on real (black) and
    adversarial images and about the attack's target (dashed), and the distance ratio; with a dissection
    (``label_kept``), the share of the real-image detectors keeping their label and their labels' IoU."""
    layers = [str(n) for n in ds["layer"].values]
    x = np.arange(len(layers))
    budgets = ds["budget"].values
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(budgets)))
    dissected = "label_kept" in ds
    fig, axes = plt.subplots(2, 3 if dissected else 2, figsize=(18 if dissected else 12, 8.2), sharex=True)
    (a, b), (c, d) = axes[:, :2]
    if dissected:
        e, f = axes[:, 2]
        for colour, budget in zip(colours, budgets):
            sel = ds.sel(budget=budget)
            if not np.isfinite(sel["label_kept"]).any():  # budget not dissected
                continue
            e.plot(x, sel["label_kept"].mean("unit", skipna=True), "o-", color=colour, label=f"{int(budget)}/255")
            f.plot(x, sel["iou_adv"].mean("unit", skipna=True), "o-", color=colour,
                   label=f"adversarial, {int(budget)}/255")
        e.plot(x, ds["label_chance"].isel(budget=-1), "--", color="0.5", lw=1,
               label=f"labels shuffled across units, {int(budgets[-1])}/255")
        f.plot(x, ds["iou_real"].mean("unit", skipna=True), "k--", lw=1.5, label="real images")
        e.set_ylim(-0.05, 1.05)
        e.set_ylabel(f"units keeping their dissection label\n(share; quantile "
                     f"{ds['label_kept'].attrs.get('quantile', '')})")
        f.set_ylabel("IoU of each unit's real-image label\n(mean over units)")
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
    for ax in axes[1]:
        _layer_axis(ax, layers)
    _save(fig, out, f"{title} ({ds.attrs.get('samples', '')} images)")


def compare_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Several models' units on the same adversarial images (colour = model, legend with its clean accuracy):
    the share of images fooling each model against the budget, and per layer at the largest budget the units'
    median response correlation, their mean top-k overlap (chance dashed), their mean information about the
    true class on real (dashed) and adversarial (solid) images, about the attack's target, and the distance
    ratio."""
    layers = [str(n) for n in ds["layer"].values]
    x = np.arange(len(layers))
    budgets = ds["budget"].values
    top = int(budgets[-1])
    colours = plt.cm.tab10(np.arange(ds.sizes["model"]) % 10)
    dissected = "label_kept" in ds
    fig, axes = plt.subplots(2, 4 if dissected else 3, figsize=(20 if dissected else 15, 8.4))
    s, a, b = axes[0, :3]
    c, t, d = axes[1, :3]
    if dissected:
        e, f = axes[:, 3]
        for colour, m in zip(colours, ds["model"].values):
            at = ds.sel(model=m, budget=top)
            e.plot(x, at["label_kept"], "o-", color=colour, label=m)
            e.plot(x, at["label_chance"], "--", color=colour, lw=1, label=f"{m}, labels shuffled across units")
            f.plot(x, at["iou_real"], "o--", color=colour, ms=3, lw=1, label=f"{m}, real images")
            f.plot(x, at["iou_adv"], "o-", color=colour, label=f"{m}, adversarial ({top}/255)")
        e.set_ylim(-0.05, 1.05)
        e.set_ylabel(f"units keeping their dissection label\n(share, {top}/255)")
        f.set_ylabel("IoU of each unit's real-image label\n(mean over units)")
    for colour, m in zip(colours, ds["model"].values):
        sel = ds.sel(model=m)
        label = f"{m} (clean {float(sel['clean_accuracy']):.1f}%)"
        s.plot(budgets, 100 * sel["success"].values, "o-", color=colour, label=label)
        at = sel.sel(budget=top)
        a.plot(x, at["response_correlation"], "o-", color=colour, label=label)
        b.plot(x, at["topk_overlap"], "o-", color=colour, label=label)
        c.plot(x, sel["mi_real"], "o--", color=colour, ms=3, lw=1, label=f"{m}, real images")
        c.plot(x, at["mi_true"], "o-", color=colour, label=f"{m}, adversarial ({top}/255)")
        t.plot(x, at["mi_target"], "o-", color=colour, label=label)
        d.plot(x, at["distance_ratio"], "o-", color=colour, label=label)
    chance = ds["topk_overlap"].attrs.get("chance")
    if chance is not None and np.isfinite(chance):
        b.axhline(chance, color="0.5", ls="--", lw=1, label="chance")
    kind = "targeted" if ds.attrs.get("targeted", 1) else "untargeted"
    s.set_xlabel("L-inf budget (1/255 of the display range)")
    s.set_ylabel(f"{kind} attack success on the model\n(% of {ds.attrs.get('samples', '')} images, stored uint8)")
    s.set_xticks(budgets)
    s.set_ylim(-2, 102)
    a.set_ylabel(f"unit response correlation, real vs adversarial\n(median over units, {top}/255)")
    b.set_ylabel(f"share of each unit's top {ds.attrs.get('topk', '')} images kept\n(mean over units, {top}/255)")
    c.set_ylabel("unit information about the true class\n(bits, mean over units)")
    t.set_ylabel(f"unit information about the attack's target\n(bits, mean over units, {top}/255)")
    d.set_ylabel(f"|f(adv) - f(real)| / |target centroid - f(real)|\n({top}/255)")
    for ax in (a, b):
        ax.set_ylim(-0.05, 1.05)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        if ax is not s:
            _layer_axis(ax, layers)
    _save(fig, out, f"{title} ({ds.attrs.get('samples', '')} images)")


def unit_maps_figure(sources: np.ndarray, adversarial: np.ndarray,
                     maps: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], budget: int,
                     out: str | Path, title: str = "") -> None:
    """One row per example: the source image, the perturbation (amplified), the adversarial image and, per layer
    of ``maps`` (layer -> (unit, change in SDs, real maps, adversarial maps), one per example), the map of the
    unit whose mean response changed most, on the real and on the adversarial image (same colour scale), laid over
    the image in grey."""
    k = len(sources)
    layers = list(maps)
    widths = [1.0] * 3 + [1.0, 1.0, 0.07] * len(layers)  # per layer: real, adversarial, colour bar
    fig = plt.figure(figsize=(1.75 * (3 + 2 * len(layers)) + 0.6 * len(layers), 1.9 * k + 0.6))
    grid = fig.add_gridspec(k, len(widths), width_ratios=widths, wspace=0.15, hspace=0.45)
    axes = np.asarray([[fig.add_subplot(grid[r, c]) for c in range(len(widths))] for r in range(k)])
    diff = adversarial.astype(np.int16) - sources.astype(np.int16)
    scale = max(int(np.abs(diff).max()), 1)
    for r in range(k):
        pert = (127 + diff[r] * (127 / scale)).clip(0, 255)
        for c, (name, img) in enumerate((("source", sources[r]), (f"perturbation x{127 / scale:.0f}", pert),
                                         (f"adversarial ({budget}/255)", adversarial[r]))):
            img = np.asarray(img, dtype=np.uint8)
            axes[r, c].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255,
                              interpolation="nearest")
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        for j, layer in enumerate(layers):
            unit, change, real, adv = maps[layer]
            top = max(float(real[r].max()), float(adv[r].max()), 1e-6)
            for i, (m, what, img) in enumerate(((real[r], "real", sources[r]),
                                                 (adv[r], f"adv. ({change[r]:+.1f} SD)", adversarial[r]))):
                ax = axes[r, 3 + 3 * j + i]
                h, w = img.shape[:2]
                ax.imshow(np.asarray(img, np.float32).mean(-1), cmap="gray", vmin=0, vmax=255,
                          interpolation="nearest")
                im = ax.imshow(m, cmap="magma", vmin=0, vmax=top, interpolation="nearest", alpha=0.7,
                               extent=(-0.5, w - 0.5, h - 0.5, -0.5))
                ax.set_title(f"{layer} u{int(unit[r])}\n{what}", fontsize=7)
            cbar = axes[r, 5 + 3 * j]
            fig.colorbar(im, cax=cbar).ax.tick_params(labelsize=6)
    for r in range(k):
        for c in range(len(widths)):
            if widths[c] == 1.0:
                axes[r, c].set_xticks([])
                axes[r, c].set_yticks([])
    _save(fig, out, f"{title} (unit activation, ReLU output, over the image in grey)", tight=False)
