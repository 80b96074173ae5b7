"""Figure of the reverse-correlation feature maps: MI drawn as heat maps on the face mesh (frontal view)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402


def frontal_faces(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Indices of the faces that look towards the viewer (+z), back to front (painter's order)."""
    tri = vertices[faces]  # (F, 3, 3)
    normal_z = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
    front = np.flatnonzero(normal_z > 0)
    return front[np.argsort(tri[front, :, 2].mean(1))]


def draw_mesh_map(ax: plt.Axes, vertices: np.ndarray, faces: np.ndarray, values: np.ndarray, mask: np.ndarray,
                  vmax: float, cmap: str = "magma") -> matplotlib.cm.ScalarMappable:
    """Per-vertex ``values`` on the frontal mesh; faces with no vertex in ``mask`` drawn grey."""
    order = frontal_faces(vertices, faces)
    f = faces[order]
    colours = plt.get_cmap(cmap)(np.clip(values[f].mean(1) / max(vmax, 1e-12), 0, 1))
    colours[~mask[f].any(1)] = (0.82, 0.82, 0.82, 1.0)
    ax.add_collection(PolyCollection(vertices[f][:, :, :2], facecolors=colours, edgecolors="none"))
    ax.set_xlim(vertices[:, 0].min(), vertices[:, 0].max())
    ax.set_ylim(vertices[:, 1].min(), vertices[:, 1].max())
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, vmax), cmap=cmap)


def revcorr_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Rows: base identities; columns: shape and texture feature maps (significant vertices coloured by MI)."""
    verts = ds["vertex_position"].values
    faces = ds["mesh_faces"].values
    ids = [str(i) for i in ds["identity"].values]
    fig, axes = plt.subplots(len(ids), 2, figsize=(8, 3.4 * len(ids) + 1.2), squeeze=False, constrained_layout=True)
    for col, kind in enumerate(("shape", "texture")):
        vmax = float(ds[f"{kind}_mi"].max())
        for row, i in enumerate(ids):
            ax = axes[row, col]
            mi = ds[f"{kind}_mi"].sel(identity=i).values
            sig = ds[f"{kind}_significant"].sel(identity=i).values
            sm = draw_mesh_map(ax, verts, faces, mi, sig, vmax)
            ax.set_title(f"identity {i}: {kind} ({int(sig.sum())} vertices significant)", fontsize=9)
        fig.colorbar(sm, ax=axes[:, col], location="bottom", shrink=0.8, label=f"MI({kind}; identity logit) (bits)")
    fig.suptitle(title or "shape and texture features the network uses\n(grey: below the permutation threshold)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def features_figure(ds: xr.Dataset, out: str | Path, title: str = "") -> None:
    """Per layer: MI of units with the diagnostic shape and texture features, and co-information with the decision."""
    layers = [str(v) for v in ds["layer"].values]
    pos = np.arange(len(layers))
    colours = {"shape": "tab:blue", "texture": "tab:red"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    for kind in ds["feature"].values:
        s = ds.sel(feature=kind)
        axes[0].plot(pos, s["mi"], "o-", color=colours.get(str(kind), "k"), label=f"{kind}: mean over units")
        axes[0].plot(pos, s["mi_max"], "^:", color=colours.get(str(kind), "k"), label=f"{kind}: best unit")
        axes[1].plot(pos, s["coinfo"], "o-", color=colours.get(str(kind), "k"), label=str(kind))
    axes[0].set(ylabel="MI(unit; diagnostic feature) (bits)", title="information about the diagnostic features")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(ylabel="co-information with the decision (bits)",
                title="unit, feature and decision: < 0 redundant, > 0 synergistic")
    for ax in axes:
        ax.set_xticks(pos, layers, rotation=60, ha="right")
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "hidden layers and the diagnostic shape and texture features")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
