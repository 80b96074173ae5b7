"""Pose invariance: at which layer does the identity code stop depending on the viewpoint?

Per layer of an activation store (on a set where identity and a pose factor vary
independently), with each unit's spatially averaged response:

- ``mi_within`` (layer, pose_bin): MI with identity within each pose bin (mean over units);
- ``mi_across`` (layer): MI with identity over all poses;
- ``mi_given_pose`` (layer): conditional MI I(unit; identity | pose) (Gaussian chain rule);

and, with the layer's maps average-pooled to at most ``grid`` x ``grid`` positions, a
cross-pose test: a linear read-out (ridge regression onto one-hot identity, solved in
its dual form) trained on half of the images of one pose bin and tested on the other
half of that bin (diagonal) and on every other bin (off-diagonal): ``accuracy``
(layer, train_bin, test_bin). ``invariance`` (layer) = mean off-diagonal / mean
diagonal accuracy: 1 when identity read-outs transfer across poses unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from ..info import mutual_information

log = logging.getLogger(__name__)


class PoseError(ValueError):
    """The set lacks what the pose analysis needs."""


def pose_bins(pose: np.ndarray, n_bins: int) -> tuple[np.ndarray, list[str]]:
    """Equal-count bins of a continuous pose factor: bin index per sample and a label per bin."""
    edges = np.quantile(pose, np.linspace(0, 1, n_bins + 1))
    idx = np.clip(np.searchsorted(edges, pose, side="right") - 1, 0, n_bins - 1)
    labels = [f"{edges[b]:.0f} to {edges[b + 1]:.0f}" for b in range(n_bins)]
    return idx, labels


def pooled_features(act: xr.DataArray, grid: int, batch: int = 512) -> np.ndarray:
    """(sample, features) float32: maps average-pooled to at most ``grid`` x ``grid``, read ``batch`` samples at a time."""
    n = act.sizes["sample"]
    out = []
    for lo in range(0, n, batch):
        block = torch.from_numpy(np.asarray(act.isel(sample=slice(lo, lo + batch)).values, dtype=np.float32))
        if block.ndim == 4:
            g = (min(grid, block.shape[2]), min(grid, block.shape[3]))
            block = F.adaptive_avg_pool2d(block, g)
        out.append(block.reshape(block.shape[0], -1).numpy())
    return np.concatenate(out)


def ridge_readout(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                  ridge: float = 1e-2) -> np.ndarray:
    """Predicted classes of ``test_x`` from a ridge regression onto one-hot ``train_y`` (dual form).

    Features are standardised with the training statistics; the penalty is ``ridge`` times
    the mean diagonal of the training Gram matrix.
    """
    mu, sd = train_x.mean(0), train_x.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    a = torch.from_numpy(((train_x - mu) / sd).astype(np.float64))
    b = torch.from_numpy(((test_x - mu) / sd).astype(np.float64))
    onehot = torch.nn.functional.one_hot(torch.from_numpy(train_y), n_classes).to(torch.float64)
    onehot = onehot - onehot.mean(0)
    gram = a @ a.T
    lam = ridge * float(gram.diagonal().mean())
    alpha = torch.linalg.solve(gram + lam * torch.eye(len(a), dtype=gram.dtype), onehot)
    return ((b @ a.T) @ alpha).argmax(1).numpy()


def cross_pose_accuracy(features: np.ndarray, labels: np.ndarray, bins: np.ndarray, n_bins: int,
                        ridge: float = 1e-2) -> np.ndarray:
    """(train_bin, test_bin) accuracy of read-outs trained on half of one bin (the other half tests the diagonal)."""
    n_classes = int(labels.max()) + 1
    acc = np.full((n_bins, n_bins), np.nan)
    for i in range(n_bins):
        members = np.flatnonzero(bins == i)
        train, held = members[0::2], members[1::2]
        for j in range(n_bins):
            test = held if i == j else np.flatnonzero(bins == j)
            pred = ridge_readout(features[train], labels[train], features[test], n_classes, ridge)
            acc[i, j] = float((pred == labels[test]).mean())
    return acc


def _mean_mi(x: xr.DataArray, y: xr.Dataset, cond: xr.DataArray | None = None) -> float:
    mi = mutual_information(x, y, "sample", cond=cond)
    return float(mi.sel(factor="identity").mean())


def pose_invariance(tree: xr.DataTree, layers: list[str], *, pose: str = "yaw", n_bins: int = 3, grid: int = 4,
                    ridge: float = 1e-2) -> xr.Dataset:
    """The pose-invariance statistics of the module docstring for ``layers`` of an activation store."""
    first = tree[layers[0]].dataset
    for name in ("identity", pose):
        if name not in first.coords:
            raise PoseError(f"the set has no {name!r} coordinate")
    ident = np.asarray(first["identity"].values)
    codes = np.unique(ident, return_inverse=True)[1].reshape(-1)
    pose_v = np.asarray(first[pose].values, dtype=np.float64)
    if len(np.unique(pose_v)) < n_bins:
        raise PoseError(f"{pose!r} takes fewer than {n_bins} values in this set: it does not vary enough")
    bins, labels = pose_bins(pose_v, n_bins)
    y = xr.Dataset({"identity": ("sample", codes)})
    y["identity"].attrs["kind"] = "categorical"
    cond = xr.DataArray(pose_v, dims="sample", name=pose)
    within, within_max, across, given, acc = [], [], [], [], []
    for name in layers:
        act = tree[name].dataset["activation"]
        act = act.drop_vars([c for c in act.coords if c not in act.dims])
        unit = act.astype(np.float32).mean([d for d in ("y", "x") if d in act.dims]).compute()
        per_bin = [mutual_information(unit.isel(sample=np.flatnonzero(bins == b)),
                                      y.isel(sample=np.flatnonzero(bins == b))).sel(factor="identity")
                   for b in range(n_bins)]
        within.append([float(m.mean()) for m in per_bin])
        within_max.append([float(m.max()) for m in per_bin])
        across.append(_mean_mi(unit, y))
        given.append(_mean_mi(unit, y, cond))
        acc.append(cross_pose_accuracy(pooled_features(act, grid), codes, bins, n_bins, ridge))
        log.info("%s: MI within %s, across %.3f, given %s %.3f bits; cross-pose accuracy diag %.2f off %.2f", name,
                 np.round(within[-1], 3), across[-1], pose, given[-1], np.nanmean(np.diag(acc[-1])),
                 np.nanmean(acc[-1][~np.eye(n_bins, dtype=bool)]))
    acc_a = np.stack(acc)
    off = ~np.eye(n_bins, dtype=bool)
    diag = np.stack([np.diag(a) for a in acc_a])
    ds = xr.Dataset(
        {"mi_within": (("layer", "pose_bin"), np.asarray(within)),
         "mi_within_max": (("layer", "pose_bin"), np.asarray(within_max)),
         "mi_across": ("layer", np.asarray(across)), "mi_given_pose": ("layer", np.asarray(given)),
         "accuracy": (("layer", "train_bin", "test_bin"), acc_a),
         "accuracy_same_pose": ("layer", diag.mean(1)),
         "accuracy_other_pose": ("layer", np.asarray([a[off].mean() for a in acc_a]))},
        coords={"layer": np.asarray(layers, dtype=object), "pose_bin": np.asarray(labels, dtype=object),
                "train_bin": np.asarray(labels, dtype=object), "test_bin": np.asarray(labels, dtype=object)})
    ds["invariance"] = ds["accuracy_other_pose"] / ds["accuracy_same_pose"]
    for v in ("mi_within", "mi_within_max", "mi_across", "mi_given_pose"):
        ds[v].attrs["units"] = "bits"
    ds.attrs.update(pose=pose, n_bins=int(n_bins), grid=int(grid), ridge=float(ridge), n_classes=int(codes.max() + 1),
                    chance=1.0 / (codes.max() + 1), n_samples=int(len(codes)))
    return ds


@dataclass(frozen=True)
class Spec:
    """Settings of the pose stage (config ``analyses``): the binned pose factor, its bins, the read-out grid."""

    pose_factor: str
    pose_bins: int
    readout_grid: int


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """Pose invariance of an activation store (``inputs["activations"]``) -> store ``out`` and ``figure``."""
    from ..figures.pose import pose_figure
    from ..nets import READOUT_LAYERS
    from ..store import open_tree, save_dataset

    tree = open_tree(inputs["activations"], "activation store")
    layers = [n for n in READOUT_LAYERS if n in tree.children]
    ds = pose_invariance(tree, layers, pose=spec.pose_factor, n_bins=spec.pose_bins, grid=spec.readout_grid)
    ds.attrs.update({k: tree.attrs[k] for k in ("model", "set") if k in tree.attrs})
    save_dataset(ds, outputs["out"], inputs=[inputs["activations"]])
    pose_figure(ds, outputs["figure"], title=f"{title}: pose invariance of the identity code")
    return summary(ds)


def summary(pose: xr.Dataset) -> dict[str, str]:
    """The pose stage's key number: where identity read-outs transfer best across poses."""
    inv = pose["invariance"]
    best = str(pose["layer"].values[int(np.nanargmax(inv.values))])
    return {"pose invariance of identity read-outs (other / same pose)": (
        f"highest at {best} ({float(inv.sel(layer=best)):.2f}); first layer {str(pose['layer'].values[0])} "
        f"{float(inv.isel(layer=0)):.2f}, last {str(pose['layer'].values[-1])} {float(inv.isel(layer=-1)):.2f}")}


def key_numbers(path: str | Path) -> dict[str, str]:
    """:func:`summary` of a finished pose store."""
    from ..store import open_dataset

    return summary(open_dataset(path, what="pose store").load())
