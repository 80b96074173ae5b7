"""Relevance propagation for the face classifiers, validated by masking, split by face part, compared across models.

After Crawford, Margalit, Grill-Spector and Poltoratski (arXiv:2006.16795), for one
trained model and one stimulus set (``samples`` images spread evenly through it):

- **maps**: the input relevance of each image's true-class logit for every method of
  :data:`infodissect.nets.lrp.METHODS` (LRP composites on a batch-norm-folded copy of the
  model, gradient x input as the baseline), summed over colour channels: ``relevance``
  (attribution, sample, y, x); ``conservation`` (attribution, layer, sample): the total relevance at
  each layer over the logit.
- **masking** (the test of the maps): square patches of ``patch`` pixels are replaced by
  the image's own background level (``fill: background``) or by a blurred copy of the
  image (``fill: blur``) in order of their relevance (MoRF: most relevant first; LeRF:
  least relevant first) or at random, in ``steps`` equal steps until every patch is gone.
  After each step the true-class logit and whether the model still answers right are
  recorded: ``masked_logit``, ``masked_correct`` (masked_by, order, step, sample); the area
  over the perturbation curve ``aopc`` (masked_by, order, sample) = mean over steps of
  (logit before - logit after) (Samek et al. 2017). A faithful map has AOPC
  MoRF > random > LeRF, tested across images (``pvalue``, one-sided sign flips).
- **face parts**: ``part_share`` (attribution, sample, part), each rendered part's share of the
  image's positive relevance; and whole parts removed in order of their relevance
  (``part_logit`` (step, sample), the default method).

:func:`compare` sets several models' maps of the same images side by side: the mean
correlation of their maps (``map_correlation`` (model, other)) and the cross-model masking
matrix (``cross_aopc``: mask by the row model's MoRF order, measure the column model's own
true-class logit).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from ..nets.lrp import METHODS, TRACE, fold_batchnorm, gradient_x_input, lrp

log = logging.getLogger(__name__)
ORDERS: tuple[str, ...] = ("morf", "random", "lerf")


class RelevanceError(ValueError):
    """A setting or an input of the relevance stage is not usable; the message names it."""


# --------------------------------------------------------------------------- maps


def true_classes(values: np.ndarray, classes: list[str], task: str, where: str) -> np.ndarray:
    """Each sample's class index among ``classes`` (the model's), from the set's ``task`` coordinate."""
    index = {str(c): i for i, c in enumerate(classes)}
    labels = [str(v) for v in np.asarray(values).tolist()]
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise RelevanceError(f"{where}: {task} value(s) {unknown[:5]} are not classes of the model "
                             f"(it knows {len(classes)}: {list(index)[:5]}...)")
    return np.asarray([index[v] for v in labels], dtype=np.int64)


def input_batches(images: Any, n: int, batch: int) -> Callable[[], Any]:
    """A function yielding ``(a, b, x)``: network inputs (B, C, H, W) in [0, 1] of samples a..b."""
    from ..nets import network_input

    def gen():
        for a in range(0, n, batch):
            b = min(n, a + batch)
            yield a, b, network_input(np.asarray(images[a:b]))
    return gen


def relevance_maps(model: torch.nn.Module, batches: Callable[[], Any], target: np.ndarray, methods: list[str]
                   ) -> dict[str, np.ndarray]:
    """``relevance`` (attribution, sample, y, x), ``conservation`` (attribution, layer, sample) and ``logits``
    (sample, class) of every method for the true classes ``target``."""
    folded = fold_batchnorm(model)
    n = len(target)
    rel, cons, logits = None, np.full((len(methods), len(TRACE), n), np.nan, np.float32), None
    for a, b, x in batches():
        t = torch.from_numpy(target[a:b])
        for i, method in enumerate(methods):
            trace: dict[str, torch.Tensor] = {}
            if method == "gradient_x_input":
                r, out = gradient_x_input(model, x, t)
            else:
                r, out = lrp(folded, x, t, method, trace)
            if rel is None:
                rel = np.zeros((len(methods), n) + tuple(r.shape[2:]), np.float32)
                logits = np.zeros((n, out.shape[1]), np.float32)
            rel[i, a:b] = r.sum(1).numpy()
            logit = out.gather(1, t.view(-1, 1)).squeeze(1)
            for j, name in enumerate(TRACE):
                if name in trace:
                    cons[i, j, a:b] = (trace[name] / logit).numpy()
            if method == "gradient_x_input":
                cons[i, TRACE.index("input"), a:b] = (r.flatten(1).sum(1) / logit).numpy()
            logits[a:b] = out.numpy()
        log.info("relevance maps: %d/%d images", b, n)
    return {"relevance": rel, "conservation": cons, "logits": logits}


# --------------------------------------------------------------------------- masking


def patch_scores(rel: np.ndarray, patch: int) -> np.ndarray:
    """Relevance summed over square patches: (sample, y, x) -> (sample, y // patch * x // patch)."""
    n, h, w = rel.shape
    if h % patch or w % patch:
        raise RelevanceError(f"relevance.patch = {patch} does not divide the image size {h} x {w}")
    return rel.reshape(n, h // patch, patch, w // patch, patch).sum((2, 4)).reshape(n, -1)


def removal_order(scores: np.ndarray, order: str, seed: int) -> np.ndarray:
    """Patch indices (sample, patch) in removal order: ``morf`` most relevant first, ``lerf`` least, ``random``
    a seeded permutation per sample. Ties keep the patch order (stable sort)."""
    if order == "morf":
        return np.argsort(-scores, axis=1, kind="stable")
    if order == "lerf":
        return np.argsort(scores, axis=1, kind="stable")
    if order == "random":
        rng = np.random.default_rng(seed)
        return np.argsort(rng.random(scores.shape), axis=1)
    raise RelevanceError(f"order must be one of {ORDERS}, not {order!r}")


def background_levels(stim: xr.Dataset) -> torch.Tensor | None:
    """Each image's background level as the network sees it (the stored uint8 value / 255), or None when the
    set has no ``background`` factor."""
    if "background" not in stim.coords:
        return None
    return torch.from_numpy(np.round(np.asarray(stim["background"].values, np.float64) * 255.0) / 255.0)


def fill_images(x: torch.Tensor, background: torch.Tensor | None, fill: str) -> torch.Tensor:
    """What removed pixels are replaced with: each image's background level, or the image blurred."""
    if fill == "background":
        if background is None:
            raise RelevanceError("relevance.fill = background needs the set's `background` factor")
        return background.view(-1, 1, 1, 1).to(x.dtype).expand_as(x)
    if fill == "blur":
        k = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=x.dtype) / 3.0) ** 2)
        k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
        y = F.conv2d(F.pad(x, (6, 6, 0, 0), mode="replicate"), k, groups=x.shape[1])
        return F.conv2d(F.pad(y, (0, 0, 6, 6), mode="replicate"), k.transpose(2, 3), groups=x.shape[1])
    raise RelevanceError(f"relevance.fill must be 'background' or 'blur', not {fill!r}")


def removed_masks(order: np.ndarray, steps: int, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """Boolean pixel masks (step + 1, sample, 1, H, W): after step k, the first k/steps of each order removed."""
    n, p = order.shape
    counts = np.round(np.linspace(0, p, steps + 1)).astype(int)
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(p)[None, :]
    cells = torch.from_numpy(rank).view(n, 1, *grid)
    up = cells.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return torch.stack([up < c for c in counts])


@torch.no_grad()
def masked_logits(models: list[torch.nn.Module], x: torch.Tensor, fill: torch.Tensor, masks: torch.Tensor,
                  targets: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per model, the true-class logit and whether it is the top class (model, step, sample) as the masks
    (step, sample, 1, H, W) remove pixels of ``x`` (replaced by ``fill``). One batched forward per step."""
    steps = masks.shape[0]
    logit = np.zeros((len(models), steps, x.shape[0]), np.float32)
    correct = np.zeros((len(models), steps, x.shape[0]), bool)
    for k in range(steps):
        xm = torch.where(masks[k], fill, x)
        for i, (m, t) in enumerate(zip(models, targets)):
            out = m(xm)
            logit[i, k] = out.gather(1, t.view(-1, 1)).squeeze(1).numpy()
            correct[i, k] = (out.argmax(1) == t).numpy()
    return logit, correct


def aopc(logit: np.ndarray) -> np.ndarray:
    """Area over the perturbation curve per sample: mean over steps 0..L of (logit at step 0 - logit at step k);
    ``logit`` (..., step, sample)."""
    return (logit[..., :1, :] - logit).mean(-2)


def one_sided_pvalue(d: np.ndarray, n_perm: int = 10000, seed: int = 0) -> float:
    """One-sided sign-flip p-value of mean(d) > 0 (paired differences across images)."""
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    null = (rng.choice([-1.0, 1.0], size=(n_perm, len(d))) * d).mean(1)
    return float((1 + np.sum(null >= d.mean() - 1e-12)) / (n_perm + 1))


# --------------------------------------------------------------------------- face parts


def part_shares(rel: np.ndarray, parts: np.ndarray, n_parts: int) -> np.ndarray:
    """Each part's share of positive relevance (sample, part); NaN for an image without positive relevance."""
    pos = np.clip(rel, 0, None).reshape(len(rel), -1)
    lab = parts.reshape(len(parts), -1).astype(np.int64)
    out = np.zeros((len(rel), n_parts), np.float64)
    for i in range(len(rel)):
        out[i] = np.bincount(lab[i], weights=pos[i], minlength=n_parts)[:n_parts]
    total = out.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, out / total, np.nan)


def part_masks(rel: np.ndarray, parts: np.ndarray, n_parts: int) -> tuple[torch.Tensor, np.ndarray]:
    """Masks (step + 1, sample, 1, H, W) removing whole parts in order of their total relevance (most first;
    parts absent from an image come last and remove nothing), and the part removed at each step (step, sample)."""
    n = len(rel)
    score = np.zeros((n, n_parts))
    present = np.zeros((n, n_parts), bool)
    lab = parts.reshape(n, -1).astype(np.int64)
    for i in range(n):
        score[i] = np.bincount(lab[i], weights=rel[i].ravel(), minlength=n_parts)[:n_parts]
        present[i] = np.bincount(lab[i], minlength=n_parts)[:n_parts] > 0
    order = np.argsort(np.where(present, -score, np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(n_parts)[None, :]
    pix_rank = torch.from_numpy(np.take_along_axis(rank, lab, 1).reshape(parts.shape))[:, None]
    masks = torch.stack([pix_rank < k for k in range(n_parts + 1)])
    return masks, order.T


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class Spec:
    """Settings of the relevance stage (config ``relevance``)."""

    methods: list[str]
    samples: int
    batch_size: int
    patch: int
    steps: int
    fill: str
    masking_methods: list[str]
    seed: int


def check_spec(spec: Spec) -> None:
    """Refuse unusable settings, naming the key, before any work."""
    bad = [m for m in list(spec.methods) + list(spec.masking_methods) if m not in METHODS]
    if bad or not spec.methods:
        raise RelevanceError(f"relevance.methods / masking_methods: {bad or '[]'} (methods: {list(METHODS)})")
    missing = [m for m in spec.masking_methods if m not in spec.methods]
    if missing:
        raise RelevanceError(f"relevance.masking_methods: {missing} are not in relevance.methods {spec.methods}")
    if spec.samples < 0 or spec.batch_size < 1 or spec.patch < 1 or spec.steps < 1:
        raise RelevanceError("relevance.samples >= 0, batch_size, patch and steps >= 1")
    if spec.fill not in ("background", "blur"):
        raise RelevanceError(f"relevance.fill must be 'background' or 'blur', not {spec.fill!r}")


def sample_index(total: int, n: int, people: np.ndarray | None = None) -> np.ndarray:
    """``n`` sample positions spread evenly through a set of ``total`` (all of them when ``n`` is 0 or larger),
    in increasing order.

    With ``people`` (each sample's identity) they are spread through the samples taken person by person, so
    they cover as many people as they can whatever the set's order (a crossed set is sample-major: evenly
    spaced positions would fall on a few people).
    """
    if not n or n >= total:
        return np.arange(total)
    spread = np.unique(np.round(np.linspace(0, total - 1, n)).astype(np.int64))
    if people is None:
        return spread
    return np.sort(np.lexsort((np.arange(total), np.asarray(people)))[spread])


def people_of(stim: xr.Dataset) -> np.ndarray | None:
    """Each sample's identity, if the set has them (for :func:`sample_index`)."""
    return np.asarray(stim["identity"].values) if "identity" in stim.coords else None


def _sample_coords(stim: xr.Dataset) -> dict[str, Any]:
    """The set's factor coordinates along ``sample``, to label the results."""
    from ..faces.factors import FACTORS

    return {k: ("sample", np.asarray([str(v) for v in stim[k].values.tolist()], dtype=object)
                if stim[k].dtype.kind in "OUST" else np.asarray(stim[k].values))
            for k in FACTORS if k in stim.coords and stim[k].dims == ("sample",)}


def analyse(model: torch.nn.Module, meta: dict[str, Any], stim: xr.Dataset, images: Any, parts: Any,
            spec: Spec, where: str) -> xr.Dataset:
    """The relevance maps, their masking curves and part shares of one model on a stimulus set (module docstring)."""
    check_spec(spec)
    task = str(meta["task"])
    if task not in stim.coords:
        raise RelevanceError(f"{where}: the set has no `{task}` coordinate (the model's task)")
    size = (int(stim.sizes["y"]), int(stim.sizes["x"]))
    if size[0] % spec.patch or size[1] % spec.patch:
        raise RelevanceError(f"relevance.patch = {spec.patch} does not divide the image size {size[0]} x {size[1]}")
    index = sample_index(int(stim.sizes["sample"]), spec.samples, people_of(stim))
    stim, n = stim.isel(sample=index), len(index)
    images, lab = np.asarray(images.oindex[index]), np.asarray(parts.oindex[index])
    target = true_classes(stim[task].values, [str(c) for c in meta["classes"]], task, where)
    batches = input_batches(images, n, spec.batch_size)
    maps = relevance_maps(model, batches, target, list(spec.methods))
    rel = maps["relevance"]
    h, w = rel.shape[2:]
    part_names = [str(p) for p in stim["parts"].attrs.get("part_names", [])]
    if not part_names:
        raise RelevanceError(f"{where}: `parts` has no part_names attribute")
    bg = background_levels(stim)
    grid = (h // spec.patch, w // spec.patch)
    mm = list(spec.masking_methods)
    logit = np.zeros((len(mm), len(ORDERS), spec.steps + 1, n), np.float32)
    correct = np.zeros_like(logit, dtype=bool)
    part_logit = np.zeros((len(part_names) + 1, n), np.float32)
    part_order = np.zeros((len(part_names), n), np.int64)
    for a, b, x in batches():
        fill = fill_images(x, bg[a:b] if bg is not None else None, spec.fill)
        t = torch.from_numpy(target[a:b])
        for i, method in enumerate(mm):
            scores = patch_scores(rel[spec.methods.index(method), a:b], spec.patch)
            for j, order in enumerate(ORDERS):
                masks = removed_masks(removal_order(scores, order, spec.seed + a), spec.steps, grid, spec.patch)
                lg, ok = masked_logits([model], x, fill, masks, [t])
                logit[i, j, :, a:b], correct[i, j, :, a:b] = lg[0], ok[0]
        masks, order = part_masks(rel[0, a:b], lab[a:b], len(part_names))
        lg, _ = masked_logits([model], x, fill, masks, [t])
        part_logit[:, a:b], part_order[:, a:b] = lg[0], order
        log.info("masking: %d/%d images", b, n)
    area = aopc(logit)
    shares = np.stack([part_shares(rel[i], lab, len(part_names)) for i in range(len(spec.methods))])
    coords = _sample_coords(stim)
    ds = xr.Dataset(
        {
            "relevance": (("attribution", "sample", "y", "x"), rel),
            "conservation": (("attribution", "layer", "sample"), maps["conservation"]),
            "logits": (("sample", "class"), maps["logits"]),
            "target": ("sample", target),
            "predicted": ("sample", maps["logits"].argmax(1)),
            "part_share": (("attribution", "sample", "part"), shares.astype(np.float32)),
            "masked_logit": (("masked_by", "order", "step", "sample"), logit),
            "masked_correct": (("masked_by", "order", "step", "sample"), correct),
            "aopc": (("masked_by", "order", "sample"), area),
            "removed": ("step", np.linspace(0, 1, spec.steps + 1)),
            "part_logit": (("part_step", "sample"), part_logit),
            "part_removed": (("part_rank", "sample"), part_order),
        },
        coords={"attribution": np.asarray(spec.methods, dtype=object), "layer": np.asarray(TRACE, dtype=object),
                "sample": np.asarray(stim["sample"].values), "class": np.asarray([str(c) for c in meta["classes"]], dtype=object),
                "part": np.asarray(part_names, dtype=object), "masked_by": np.asarray(mm, dtype=object),
                "order": np.asarray(ORDERS, dtype=object), "step": np.arange(spec.steps + 1),
                "part_step": np.arange(len(part_names) + 1), "part_rank": np.arange(len(part_names)), **coords},
        attrs={"task": task, "set": str(stim.attrs.get("set", "")), "patch": spec.patch, "steps": spec.steps,
               "fill": spec.fill, "n_samples": n, "relevance_of": "the true-class logit"})
    ds["relevance"].attrs.update(units="logit units", description="input relevance summed over colour channels")
    ds["conservation"].attrs.update(description="total relevance at each layer / target logit (1 = conserved)")
    ds["aopc"].attrs.update(units="logit units", description="area over the perturbation curve (Samek et al. 2017)")
    ds["part_share"].attrs.update(units="share", description="share of the image's positive relevance")
    ds["removed"].attrs.update(units="share", description="share of the image's patches removed after each step")
    pvalues = [[one_sided_pvalue(area[i, 0] - area[i, 1], seed=spec.seed),
                one_sided_pvalue(area[i, 1] - area[i, 2], seed=spec.seed)] for i in range(len(mm))]
    ds["ordering_pvalue"] = (("masked_by", "comparison"), np.asarray(pvalues))
    ds = ds.assign_coords(comparison=np.asarray(["morf > random", "random > lerf"], dtype=object))
    ds["ordering_pvalue"].attrs.update(description="one-sided sign-flip p-value across images of the AOPC difference")
    return ds


def feature_part_shares(revcorr: xr.Dataset, parts: list[str]) -> xr.DataArray:
    """Each face part's share of the reverse-correlation features of the same model (:mod:`.revcorr`): the
    vertex MI of shape and of texture with the identity evidence, summed over the part's vertices, mean over
    the base identities (feature, part). Mesh vertices are not spread evenly over the projected image, so
    shares compare the ranking of parts with the relevance's, not their exact sizes."""
    vpart = np.asarray([str(v) for v in revcorr["vertex_part"].values])
    rows = []
    for feature in ("shape", "texture"):
        mi = np.clip(np.nan_to_num(revcorr[f"{feature}_mi"].values.astype(np.float64)), 0, None)
        per = np.stack([mi[:, vpart == p].sum(1) for p in parts], 1)
        total = per.sum(1, keepdims=True)
        rows.append(np.nanmean(np.where(total > 0, per / np.where(total > 0, total, 1), np.nan), 0))
    out = xr.DataArray(np.asarray(rows), dims=("feature", "part"),
                       coords={"feature": np.asarray(["shape", "texture"], dtype=object),
                               "part": np.asarray(parts, dtype=object)}, name="feature_part_share")
    out.attrs.update(units="share", description="share of the reverse-correlation vertex MI (shape, texture) per "
                     "face part, mean over base identities")
    return out


def summary(ds: xr.Dataset) -> dict[str, str]:
    """The stage's key numbers: AOPC per order (the default method) with its tests, the top face part."""
    m = str(ds["masked_by"].values[0])
    a = ds["aopc"].sel(masked_by=m).mean("sample")
    p = ds["ordering_pvalue"].sel(masked_by=m)
    share = ds["part_share"].isel(attribution=0).mean("sample")
    top = share.sortby(share, ascending=False)
    return {
        f"relevance masking AOPC ({m}): MoRF / random / LeRF": (
            f"{float(a.sel(order='morf')):.2f} / {float(a.sel(order='random')):.2f} / {float(a.sel(order='lerf')):.2f}"
            f" (p = {float(p.values[0]):.2g}, {float(p.values[1]):.2g}; {ds.sizes['sample']} images)"),
        f"share of positive relevance ({str(ds['attribution'].values[0])})": ", ".join(
            f"{str(k)} {100 * float(v):.0f}%" for k, v in zip(top["part"].values[:3], top.values[:3])),
    }


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """Relevance of ``inputs["model"]`` on ``inputs["stimuli"]`` -> store ``out``, figures ``figure``
    (maps), ``masking_figure`` and ``parts_figure``; with the model's reverse-correlation store
    (``inputs["revcorr"]``) its features' part shares beside the relevance's."""
    from ..activations.extract import load_trained
    from ..figures.relevance import maps_figure, masking_figure, parts_figure
    from ..stimuli.store import open_stimuli
    from ..store import open_dataset, open_group, save_dataset

    check_spec(spec)
    stim = open_stimuli(inputs["stimuli"], require=("image", "parts"))
    group = open_group(inputs["stimuli"], "stimulus store")
    model, meta = load_trained(inputs["model"])
    ds = analyse(model, meta, stim, group["image"], group["parts"], spec, str(inputs["stimuli"]))
    ds.attrs["model"] = Path(inputs["model"]).parent.name
    sources = [inputs["stimuli"], inputs["model"]]
    if inputs.get("revcorr"):
        revcorr = open_dataset(inputs["revcorr"], what="reverse-correlation store")
        ds["feature_part_share"] = feature_part_shares(revcorr, [str(p) for p in ds["part"].values])
        sources.append(inputs["revcorr"])
    save_dataset(ds, outputs["out"], inputs=sources)
    name = title or ds.attrs["model"]
    shown = ds.isel(sample=sample_index(ds.sizes["sample"], 5, people_of(ds)))  # spread through the images and people
    where = np.flatnonzero(np.isin(stim["sample"].values, shown["sample"].values))
    maps_figure(ds, np.asarray(group["image"].oindex[where]), outputs["figure"], title=f"{name}: relevance maps",
                examples=shown["sample"].values)
    masking_figure(ds, outputs["masking_figure"], title=f"{name}: removing pixels in order of relevance")
    parts_figure(ds, outputs["parts_figure"], title=f"{name}: relevance per face part")
    return summary(ds)


def key_numbers(path: str | Path) -> dict[str, str]:
    """:func:`summary` of a finished relevance store."""
    from ..store import open_dataset

    return summary(open_dataset(path, what="relevance store").drop_vars("relevance").load())


# --------------------------------------------------------------------------- across models


def map_correlation(maps: list[np.ndarray]) -> np.ndarray:
    """Mean over images of the Pearson correlation between each pair of models' maps (model, model)."""
    z = []
    for m in maps:
        flat = m.reshape(len(m), -1).astype(np.float64)
        flat = flat - flat.mean(1, keepdims=True)
        z.append(flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-30))
    return np.asarray([[float(np.mean(np.sum(a * b, 1))) for b in z] for a in z])


@dataclass(frozen=True)
class CompareSpec:
    """Settings of the cross-model comparison (config ``relevance``)."""

    batch_size: int
    patch: int
    steps: int
    fill: str


def compare(stores: list[xr.Dataset], models: list[torch.nn.Module], metas: list[dict[str, Any]], stim: xr.Dataset,
            images: Any, spec: CompareSpec) -> xr.Dataset:
    """Cross-model consistency of the first method's maps on the same images (module docstring)."""
    names = [str(s.attrs.get("model", f"model{i}")) for i, s in enumerate(stores)]
    n = int(stores[0].sizes["sample"])
    maps = [s["relevance"].isel(attribution=0).values for s in stores]
    corr = map_correlation(maps)
    targets = [torch.from_numpy(s["target"].values) for s in stores]
    bg = background_levels(stim)
    h, w = maps[0].shape[1:]
    grid = (h // spec.patch, w // spec.patch)
    cross = np.zeros((len(models), len(models), n), np.float32)
    for a, b, x in input_batches(images, n, spec.batch_size)():
        fill = fill_images(x, bg[a:b] if bg is not None else None, spec.fill)
        for i in range(len(models)):
            order = removal_order(patch_scores(maps[i][a:b], spec.patch), "morf", 0)
            lg, _ = masked_logits(models, x, fill, removed_masks(order, spec.steps, grid, spec.patch),
                                  [t[a:b] for t in targets])
            cross[i, :, a:b] = aopc(lg)
    text = np.asarray(names, dtype=object)
    mean = cross.mean(-1)
    ds = xr.Dataset({"map_correlation": (("model", "other"), corr),
                     "cross_aopc": (("model", "other"), mean),
                     "cross_aopc_relative": (("model", "other"), mean / np.diag(mean)[None, :]),
                     "cross_aopc_sample": (("model", "other", "sample"), cross),
                     "task": ("model", np.asarray([str(m["task"]) for m in metas], dtype=object))},
                    coords={"model": text, "other": text, "sample": stores[0]["sample"].values},
                    attrs={"method": str(stores[0]["attribution"].values[0]), "n_samples": n, "patch": spec.patch,
                           "steps": spec.steps, "set": str(stores[0].attrs.get("set", ""))})
    ds["map_correlation"].attrs.update(description="mean over images of the Pearson correlation of the two maps")
    ds["cross_aopc"].attrs.update(units="logit units", description="AOPC of the column model's true-class logit "
                                  "when pixels are removed in the row model's MoRF order")
    ds["cross_aopc_relative"].attrs.update(units="share", description="cross_aopc over the column model's AOPC "
                                           "under its own order (1: the row model's map finds its evidence as well)")
    return ds


def compare_summary(ds: xr.Dataset) -> dict[str, str]:
    """Key numbers of the comparison: map correlation and relative cross-model AOPC, same task vs other task."""
    tasks = [str(t) for t in ds["task"].values]
    pairs = [(i, j) for i in range(len(tasks)) for j in range(len(tasks)) if i != j]
    out = {}
    for var, label in (("map_correlation", "relevance map correlation across models"),
                       ("cross_aopc_relative", "AOPC under another model's relevance order / own")):
        v = ds[var].values
        same = [v[i, j] for i, j in pairs if tasks[i] == tasks[j]]
        other = [v[i, j] for i, j in pairs if tasks[i] != tasks[j]]
        fmt = lambda x: f"{np.mean(x):.2f}" if x else "n/a"  # noqa: E731
        out[f"{label} (same task / other task)"] = f"{fmt(same)} / {fmt(other)}"
    return out


def run_compare(spec: CompareSpec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = ""
                ) -> dict[str, str]:
    """Several models' relevance stores of one set (``relevance``, with their ``models``) -> store ``out`` and
    ``figure``."""
    from ..activations.extract import load_trained
    from ..figures.relevance import compare_figure
    from ..stimuli.store import open_stimuli
    from ..store import open_dataset, open_group, save_dataset

    paths, model_paths = list(inputs["relevance"]), list(inputs["models"])
    if len(paths) != len(model_paths) or len(paths) < 2:
        raise RelevanceError(f"--relevance and --models: one store per model, at least two "
                             f"({len(paths)} stores, {len(model_paths)} models)")
    stores = [open_dataset(p, what="relevance store") for p in paths]
    sets = {str(s.attrs.get("set")) for s in stores}
    if len(sets) != 1:
        raise RelevanceError(f"--relevance: stores of different sets {sorted(sets)}")
    loaded = [load_trained(p) for p in model_paths]
    stim = open_stimuli(inputs["stimuli"], require=("image",))
    samples = stores[0]["sample"].values
    if any(not np.array_equal(s["sample"].values, samples) for s in stores):
        raise RelevanceError("--relevance: the stores explain different images (relevance.samples changed?)")
    index = np.flatnonzero(np.isin(stim["sample"].values, samples))
    if len(index) != len(samples):
        raise RelevanceError(f"--relevance: its images are not all samples of {inputs['stimuli']}")
    images = np.asarray(open_group(inputs["stimuli"], "stimulus store")["image"].oindex[index])
    ds = compare(stores, [m for m, _ in loaded], [meta for _, meta in loaded], stim.isel(sample=index), images,
                 spec)
    save_dataset(ds, outputs["out"], inputs=[*paths, *model_paths])
    compare_figure(ds, outputs["figure"], title=title or f"relevance across models ({ds.attrs['set']} set)")
    return compare_summary(ds)


def compare_key_numbers(path: str | Path) -> dict[str, str]:
    """:func:`compare_summary` of a finished comparison store."""
    from ..store import open_dataset

    return compare_summary(open_dataset(path, what="relevance comparison store").load())
