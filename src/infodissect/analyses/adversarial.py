"""Adversarial stimulus sets: an ensemble attack on trained classifiers (Dong et al., arXiv:1708.05493).

For one source stimulus set and an ensemble of trained models of one task:

- **attack**: every image (``samples`` spread evenly through the set, 0 = all) is attacked
  within each L-infinity ``budgets`` (in 1/255 of the display range) by an iterative
  attack of torchattacks (``mifgsm``: momentum iterative FGSM, the ensemble attack of
  Dong et al.; ``pgd``), against the ensemble's averaged logits, models in eval mode and
  float32. Targeted attacks aim at another class, drawn per sample from the seed
  (the same whatever the batching); untargeted ones at any wrong class. Step size
  2.5 x budget / steps (Madry et al.).
- **rounding**: the adversarial image is rounded to uint8, as every stimulus is stored; a
  value within the budget rounds to one within it, since the source is itself on the
  uint8 grid. Success is decided again on the rounded image: ``success`` (the ensemble
  now answers the target, or anything but the truth when untargeted).
- **sets**: ``results/stimuli/{set}_adv_{budget}.zarr`` is a stimulus store like its
  source (``image``, ``parts`` and every factor of the source images, generator
  attributes) plus, along ``sample``: ``source_sample``, ``target`` (the class aimed
  at), ``success``, ``linf`` and ``l2`` (display units 0-255), and the attack in attrs;
  so extraction, MI and dissection read it unchanged. Budget 0 is the source set itself.
- **summary** (``results/adversarial/{set}.zarr``): per budget and model (every
  ensemble member, the ensemble, and the ``transfer`` models left out of it) the share of
  images the attack fools, before and after rounding, and the perturbation norms.

:func:`consistency` asks Dong et al.'s question of one model's units, from its activations
on the source images and on each budget's adversarial images (the same images, which look
the same to a person): per layer and unit, the correlation of a unit's response (its
spatial mean) across images, real against adversarial (``response_correlation``); the
overlap of its top-activating images (``topk_overlap``; chance = the top share); its
information (GCMI, bits) about the true identity on real and on adversarial images and
about the attack's target (``mi_true``, ``mi_target``); and per layer the distance ratio
(``distance_ratio``: |f(adv) - f(real)| over |centroid of the target class's real images -
f(real)|, whole layer, mean over images: near 0 the representation stays with the
source, near 1 it reaches the target).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

log = logging.getLogger(__name__)
ATTACKS: tuple[str, ...] = ("mifgsm", "pgd")
ENSEMBLE = "ensemble"


class AdversarialError(ValueError):
    """A setting or an input of the adversarial stage is not usable; the message names it."""


@dataclass(frozen=True)
class Spec:
    """Settings of the attack (config ``adversarial``)."""

    budgets: list[int]  # L-infinity budgets in 1/255 of the display range
    attack: str  # mifgsm or pgd
    steps: int
    targeted: bool
    samples: int  # images spread evenly through the set (0 = all)
    batch_size: int
    seed: int


def check_spec(spec: Spec) -> None:
    """Refuse unusable settings by name, before any work."""
    if spec.attack not in ATTACKS:
        raise AdversarialError(f"adversarial.attack = {spec.attack!r}: known attacks are {list(ATTACKS)}")
    if not spec.budgets or any(not isinstance(b, int) or isinstance(b, bool) or not 0 <= b <= 255
                               for b in spec.budgets):
        raise AdversarialError(f"adversarial.budgets = {spec.budgets!r}: give integers in 0..255 (units of 1/255)")
    if len(set(spec.budgets)) != len(spec.budgets):
        raise AdversarialError(f"adversarial.budgets = {spec.budgets!r} repeats a budget")
    for name in ("steps", "batch_size"):
        if getattr(spec, name) < 1:
            raise AdversarialError(f"adversarial.{name} = {getattr(spec, name)} must be at least 1")
    if spec.samples < 0:
        raise AdversarialError(f"adversarial.samples = {spec.samples} must be 0 (all) or more")


class Ensemble(nn.Module):
    """The mean of several classifiers' logits (eval mode, float32): the model an ensemble attack fools."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def target_classes(true: np.ndarray, samples: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """A class other than ``true`` for each sample, drawn from ``seed`` and the sample's own label (so the same
    whatever the batching or the subset attacked)."""
    if n_classes < 2:
        raise AdversarialError(f"a targeted attack needs two classes or more, the models have {n_classes}")
    offsets = np.asarray([np.random.default_rng([seed, 1708, int(s)]).integers(1, n_classes) for s in samples])
    return (np.asarray(true, np.int64) + offsets) % n_classes


def perturb(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, budget: int,
            attack: str, steps: int, seed: int) -> torch.Tensor:
    """Adversarial images (B, C, H, W) in [0, 1] within ``budget``/255 of ``x`` (L-infinity), by torchattacks;
    ``targets`` None = untargeted."""
    try:
        import torchattacks
    except ImportError as exc:
        raise AdversarialError("the adversarial stage needs torchattacks: pip install --no-deps torchattacks==3.5.1 "
                               "(scripts/setup.sh does)") from exc

    if budget == 0:
        return x.clone()
    eps = budget / 255.0
    alpha = 2.5 * eps / steps
    if attack == "mifgsm":
        atk = torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps, decay=1.0)
    else:
        torch.manual_seed(seed)  # PGD's random start
        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    if targets is not None:
        atk.set_mode_targeted_by_function(lambda images, labels: targets, quiet=True)
    return atk(x, labels).detach()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (B, C, H, W) as stored: uint8 (B, H, W, C), rounded to the nearest level."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@torch.no_grad()
def predictions(models: dict[str, nn.Module], x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each model's predicted class for the images ``x`` (B, C, H, W); an :class:`Ensemble` among them is
    answered from its members' logits when they are judged too (one forward pass per network)."""
    logits = {name: m(x) for name, m in models.items() if not isinstance(m, Ensemble)}
    judged = {id(models[name]): z for name, z in logits.items()}
    for name, m in models.items():
        if isinstance(m, Ensemble):
            logits[name] = torch.stack([judged[id(p)] if id(p) in judged else p(x) for p in m.members]).mean(0)
    return {name: logits[name].argmax(1).numpy() for name in models}


def fooled(pred: np.ndarray, true: np.ndarray, target: np.ndarray | None) -> np.ndarray:
    """Whether each prediction is the attack's success: the target, or (untargeted) anything but the truth."""
    return pred == target if target is not None else pred != true


def attack_images(ensemble: Ensemble, judges: dict[str, nn.Module], images: np.ndarray, true: np.ndarray,
                  target: np.ndarray | None, spec: Spec, budget: int) -> dict[str, np.ndarray]:
    """Attack ``images`` (N, H, W, C) uint8 within ``budget``: the rounded adversarial images, their
    perturbation norms and, per judge (ensemble members, the ensemble, transfer models), success before and
    after rounding."""
    from tqdm import tqdm

    from ..nets import network_input

    n = len(images)
    adv = np.empty_like(images)
    raw = {k: np.zeros(n, bool) for k in judges}
    rounded = {k: np.zeros(n, bool) for k in judges}
    for a in tqdm(range(0, n, spec.batch_size), desc=f"attack {budget}/255", unit="batch", mininterval=5):
        b = min(n, a + spec.batch_size)
        x = network_input(images[a:b])
        t = None if target is None else torch.from_numpy(target[a:b])
        y = torch.from_numpy(true[a:b])
        x_adv = perturb(ensemble, x, y, t, budget, spec.attack, spec.steps, spec.seed + a)
        u8 = to_uint8(x_adv)
        adv[a:b] = u8.numpy()
        tb = None if target is None else target[a:b]
        for k, p in predictions(judges, x_adv).items():
            raw[k][a:b] = fooled(p, true[a:b], tb)
        for k, p in predictions(judges, network_input(u8.numpy())).items():
            rounded[k][a:b] = fooled(p, true[a:b], tb)
    diff = adv.astype(np.int16) - images.astype(np.int16)
    return {"image": adv, "linf": np.abs(diff).reshape(n, -1).max(1).astype(np.uint8),
            "l2": np.sqrt((diff.astype(np.float64) ** 2).reshape(n, -1).sum(1)).astype(np.float32),
            "raw": raw, "rounded": rounded}


def adversarial_set(source: xr.Dataset, result: dict[str, np.ndarray], target: np.ndarray | None,
                    classes: list[str], attrs: dict[str, Any]) -> xr.Dataset:
    """The stimulus store of one budget: the attacked ``source`` images (loaded) with the adversarial images and
    the attack's coordinates along ``sample``."""
    ds = source.copy()
    ds["image"] = (ds["image"].dims, result["image"], ds["image"].attrs)
    labels = np.asarray(classes, dtype=object)
    coords = {
        "source_sample": ("sample", ds["sample"].values.copy(), {"description": "the source image's sample"}),
        "success": ("sample", result["rounded"][ENSEMBLE],
                    {"description": "the ensemble is fooled by the stored (uint8) image"}),
        "linf": ("sample", result["linf"], {"units": "display value 0-255", "description": "max |adv - source|"}),
        "l2": ("sample", result["l2"], {"units": "display value 0-255", "description": "L2 norm of adv - source"}),
    }
    if target is not None:
        coords["target"] = ("sample", labels[target], {"description": "the class the attack aims at"})
    ds = ds.assign_coords(coords)
    for v in ds.variables.values():
        v.encoding.clear()
    ds.attrs.update(attrs)
    return ds


def summary_dataset(results: dict[int, dict[str, Any]], judges: list[str], members: list[str]) -> xr.Dataset:
    """Success per budget and judge (before and after rounding) and the perturbation norms per budget."""
    budgets = sorted(results)
    rate = lambda key: np.asarray([[float(np.mean(results[b][key][j])) for j in judges] for b in budgets])  # noqa: E731
    role = ["member" if j in members else ENSEMBLE if j == ENSEMBLE else "transfer" for j in judges]
    return xr.Dataset(
        {"success": (("budget", "model"), rate("rounded"), {"description": "share of images fooling the model, "
                                                                         "stored (uint8) images"}),
         "success_unrounded": (("budget", "model"), rate("raw"), {"description": "the same before rounding"}),
         "linf_max": ("budget", [int(results[b]["linf"].max()) for b in budgets], {"units": "display value 0-255"}),
         "l2_mean": ("budget", [float(results[b]["l2"].mean()) for b in budgets], {"units": "display value 0-255"})},
        coords={"budget": ("budget", budgets, {"units": "1/255 of the display range"}), "model": judges,
                "role": ("model", role)})


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Any], title: str = "") -> dict[str, str]:
    """Attack ``inputs["stimuli"]`` with the ensemble of ``inputs["models"]`` (``inputs["transfer"]``: models
    only judged) -> one stimulus store per budget (``outputs["out"]``, in the order of ``spec.budgets``), the
    summary store ``summary`` and its figure ``figure``."""
    from ..activations.extract import load_trained
    from ..figures.adversarial import adversarial_figure
    from ..stimuli.store import open_stimuli
    from ..store import save_dataset
    from .relevance import people_of, sample_index, true_classes

    check_spec(spec)
    outs = list(outputs["out"]) if isinstance(outputs["out"], (list, tuple)) else [outputs["out"]]
    if len(outs) != len(spec.budgets):
        raise AdversarialError(f"--out names {len(outs)} store(s) for {len(spec.budgets)} budget(s) "
                               f"{spec.budgets}: give one per budget, in order")
    if not inputs.get("models"):
        raise AdversarialError("--models: the ensemble needs at least one trained model")
    where = str(inputs["stimuli"])
    stim = open_stimuli(where, require=("image", "parts"))
    loaded = {Path(p).parent.name: load_trained(p) for p in [*inputs["models"], *(inputs.get("transfer") or [])]}
    members = [Path(p).parent.name for p in inputs["models"]]
    first = loaded[members[0]][1]
    task, classes = str(first["task"]), [str(c) for c in first["classes"]]
    for name, (_, meta) in loaded.items():
        if str(meta["task"]) != task or [str(c) for c in meta["classes"]] != classes:
            raise AdversarialError(f"model {name} ({meta['task']}, {len(meta['classes'])} classes) does not share the "
                                   f"task and classes of {members[0]} ({task}, {len(classes)}): an ensemble and its "
                                   "transfer models must")
    if task not in stim.coords:
        raise AdversarialError(f"{where}: the set has no `{task}` coordinate (the models' task)")
    index = sample_index(int(stim.sizes["sample"]), spec.samples, people_of(stim))
    source = stim.isel(sample=index).load()  # the attacked images, their part maps and factors
    images = source["image"].values
    true = true_classes(source[task].values, classes, task, where)
    target = target_classes(true, source["sample"].values, len(classes), spec.seed) if spec.targeted else None
    ensemble = Ensemble([loaded[m][0] for m in members]).eval()
    judges: dict[str, nn.Module] = {m: loaded[m][0] for m in members}
    judges[ENSEMBLE] = ensemble
    judges.update({k: v[0] for k, v in loaded.items() if k not in members})
    results = {}
    for budget, out in zip(spec.budgets, outs):
        res = attack_images(ensemble, judges, images, true, target, spec, budget)
        results[budget] = res
        attrs = {"adversarial": json.dumps({"source": Path(where).name, "budget": budget, "attack": spec.attack,
                                            "steps": spec.steps, "targeted": spec.targeted, "ensemble": members,
                                            "task": task, "seed": spec.seed}, sort_keys=True)}
        save_dataset(adversarial_set(source, res, target, classes, attrs), out,
                     inputs=[where, *inputs["models"]])
        log.info("budget %d/255: ensemble fooled on %.1f%% of %d images (stored uint8)", budget,
                 100 * res["rounded"][ENSEMBLE].mean(), len(index))
    ds = summary_dataset(results, list(judges), members)
    ds.attrs.update(source=Path(where).name, attack=spec.attack, steps=spec.steps, targeted=int(spec.targeted),
                    task=task, samples=len(index))
    save_dataset(ds, outputs["summary"], inputs=[where, *inputs["models"]])
    top = max(spec.budgets)
    shown = sample_index(len(index), 4, people_of(source))
    adversarial_figure(ds, images[shown], results[top]["image"][shown], top, outputs["figure"],
                       title=f"{title or Path(where).stem}: {spec.attack} on {', '.join(members)}")
    return summary(ds)


def summary(ds: xr.Dataset) -> dict[str, str]:
    """Key numbers: the ensemble's and the transfer models' success at the largest budget."""
    top = ds.isel(budget=-1)
    budget = int(top["budget"])
    kind = "targeted" if ds.attrs.get("targeted") else "untargeted"
    out = {f"{kind} success at {budget}/255 (ensemble, stored uint8)":
           f"{100 * float(top['success'].sel(model=ENSEMBLE)):.1f}%"}
    for m in ds["model"].values[ds["role"].values == "transfer"]:
        out[f"transfer to {m} at {budget}/255"] = f"{100 * float(top['success'].sel(model=m)):.1f}%"
    out[f"max L-inf perturbation at {budget}/255"] = f"{int(top['linf_max'])}/255"
    return out


def key_numbers(path: str | Path) -> dict[str, str]:
    """:func:`summary` of a finished summary store."""
    from ..store import open_dataset

    return summary(open_dataset(path, what="adversarial summary store").load())


# --------------------------------------------------------------------------- consistency of unit semantics


def response_correlation(real: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """(unit,) Pearson correlation across images of each unit's response (sample, unit), real against adversarial;
    NaN for a unit constant on either."""
    a = real - real.mean(0)
    b = adv - adv.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def topk_overlap(real: np.ndarray, adv: np.ndarray, k: int) -> np.ndarray:
    """(unit,) share of a unit's ``k`` top-activating real images that are also among its top ``k`` adversarial
    images (ties broken by sample order)."""
    top_r = np.argsort(-real, axis=0, kind="stable")[:k]
    top_a = np.argsort(-adv, axis=0, kind="stable")[:k]
    n = real.shape[0]
    hit = np.zeros((n, real.shape[1]), bool)
    np.put_along_axis(hit, top_r, True, axis=0)
    return np.take_along_axis(hit, top_a, axis=0).mean(0)


def distance_ratio(real: np.ndarray, adv: np.ndarray, true: np.ndarray, target: np.ndarray) -> float:
    """Mean over images of |f(adv) - f(real)| / |centroid of the target class's real images - f(real)| (rows:
    whole-layer representations); images whose target class has no real image are left out."""
    ratios = []
    for c in np.unique(target):
        mine = true == c
        if not mine.any():
            continue
        centroid = real[mine].mean(0)
        rows = np.flatnonzero(target == c)
        far = np.linalg.norm(centroid[None] - real[rows], axis=1)
        ratios.append(np.linalg.norm(adv[rows] - real[rows], axis=1) / np.maximum(far, 1e-12))
    return float(np.mean(np.concatenate(ratios))) if ratios else float("nan")


@dataclass(frozen=True)
class ConsistencySpec:
    """Settings of the consistency analysis (config ``adversarial``)."""

    topk: float  # share of the images in a unit's top set
    layers: list[str]  # layers compared ([] = every stored layer)


def _labels(values: Any) -> np.ndarray:
    """Class labels as Python strings (object array), whatever the stored string dtype."""
    return np.asarray([str(v) for v in np.asarray(values).tolist()], dtype=object)


def _unit_mi(resp: np.ndarray, factors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GCMI (bits) of each unit's response (sample, unit) with each discrete factor; 0 for constant units."""
    import warnings

    from ..info import mutual_information

    x = xr.DataArray(resp.astype(np.float32), dims=("sample", "unit"))
    y = xr.Dataset({k: ("sample", _labels(v)) for k, v in factors.items()})
    with warnings.catch_warnings():  # dead ReLU units (MI 0) are expected: the engine's warning is not shown
        warnings.simplefilter("ignore", RuntimeWarning)
        mi = mutual_information(x, y, "sample")
    return {k: np.asarray(mi.sel(factor=k).values, np.float64) for k in factors}


def consistency(real: xr.DataTree, adversarial: dict[int, xr.DataTree], layers: list[str], topk: float,
                task: str) -> xr.Dataset:
    """The consistency of each unit's semantics between real and adversarial images (module docstring):
    ``real``, the model's activations on the source set; ``adversarial`` (budget -> activations on that
    budget's adversarial set, whose ``source_sample`` names the real images)."""
    from .pose import pooled_features

    budgets = sorted(adversarial)
    first = adversarial[budgets[0]]
    source = first["source_sample"].values if "source_sample" in first.coords else None
    if source is None or task not in first.coords:
        raise AdversarialError(f"the adversarial activations have no source_sample or {task} coordinate: are they "
                               "activations of an adversarial set?")
    for b in budgets:
        if not np.array_equal(adversarial[b]["source_sample"].values, source):
            raise AdversarialError(f"budget {b}: its images are not the same source images as budget {budgets[0]}'s")
    where = np.searchsorted(real["sample"].values, source)
    if (where >= real.sizes["sample"]).any() or not np.array_equal(real["sample"].values[where], source):
        raise AdversarialError("the real activations lack some source images of the adversarial sets")
    true = _labels(first[task].values)
    target = _labels(first["target"].values) if "target" in first.coords else None
    n = len(source)
    k = max(1, int(round(topk * n)))
    out: dict[str, list] = {key: [] for key in ("corr", "overlap", "mi_true", "mi_target", "mi_real", "ratio")}
    units = {}
    for layer in layers:
        act_r = real[layer]["activation"].isel(sample=where)
        resp_r = pooled_features(act_r, 1)
        full_r = pooled_features(act_r, 1 << 16)
        mi_real = _unit_mi(resp_r, {"true": true})["true"]
        units[layer] = resp_r.shape[1]
        row = {key: [] for key in out}
        for b in budgets:
            act_a = adversarial[b][layer]["activation"]
            resp_a = pooled_features(act_a, 1)
            row["corr"].append(response_correlation(resp_r, resp_a))
            row["overlap"].append(topk_overlap(resp_r, resp_a, k))
            mi = _unit_mi(resp_a, {"true": true, **({"target": target} if target is not None else {})})
            row["mi_true"].append(mi["true"])
            row["mi_target"].append(mi.get("target", np.full(resp_a.shape[1], np.nan)))
            row["mi_real"].append(mi_real)
            row["ratio"].append(distance_ratio(full_r, pooled_features(act_a, 1 << 16), true, target)
                                if target is not None else np.nan)
        for key in out:
            out[key].append(row[key])
    width = max(units.values())

    def per_unit(key: str) -> np.ndarray:  # (budget, layer, unit), NaN-padded to the widest layer
        arr = np.full((len(budgets), len(layers), width), np.nan)
        for i, rows in enumerate(out[key]):
            for j, v in enumerate(rows):
                arr[j, i, :len(v)] = v
        return arr

    dims = ("budget", "layer", "unit")
    return xr.Dataset(
        {"response_correlation": (dims, per_unit("corr"), {"description": "correlation across images of the unit's "
                                                                        "mean response, real vs adversarial"}),
         "topk_overlap": (dims, per_unit("overlap"), {"description": f"share of the unit's top {k} real images "
                                                                      "among its top adversarial ones",
                                                      "chance": k / n}),
         "mi_true": (dims, per_unit("mi_true"), {"units": "bits", "description": "GCMI with the true class on "
                                                                                 "adversarial images"}),
         "mi_target": (dims, per_unit("mi_target"), {"units": "bits", "description": "GCMI with the attack's target "
                                                                                     "on adversarial images"}),
         "mi_real": (dims, per_unit("mi_real"), {"units": "bits", "description": "GCMI with the true class on the "
                                                                                 "real images"}),
         "distance_ratio": (("budget", "layer"), np.asarray(out["ratio"], np.float64).T,
                            {"description": "|f(adv) - f(real)| / |target-class centroid - f(real)|"})},
        coords={"budget": ("budget", budgets, {"units": "1/255 of the display range"}), "layer": list(layers),
                "unit": np.arange(width), "units": ("layer", [units[name] for name in layers])},
        attrs={"topk": k, "samples": n, "task": task})


def dissection_consistency(stores: dict[int, xr.DataTree], layers: list[str], budgets: list[int],
                           width: int) -> xr.Dataset:
    """Network dissection on real against adversarial images: from the dissection stage's stores of the adversarial
    sets (budget -> store; budget 0, the source images unattacked, is the real reference), at their first
    quantile, per budget, layer and unit (``budgets`` and ``width`` units, NaN where not dissected): whether the
    unit's label on the real images is still its label (``label_kept``, 1 or 0) and the IoU of that concept on
    the adversarial images (``iou_adv``); per layer and unit its IoU on real images (``iou_real``) and whether it
    is a detector there (``detector_real``)."""
    if 0 not in stores:
        raise AdversarialError(f"--dissection: budgets {sorted(stores)}; give the dissection of the budget-0 set "
                               "({set}_adv_0, the source images unattacked): the real reference")
    extra = sorted(set(stores) - set(budgets))
    if extra:
        raise AdversarialError(f"--dissection: budgets {extra} are not among the measured ones {budgets}")
    real = stores[0]
    shape = (len(budgets), len(layers), width)
    kept, iou_adv = np.full(shape, np.nan), np.full(shape, np.nan)
    chance = np.full(shape[:2], np.nan)
    iou_real, detector = np.full(shape[1:], np.nan), np.full(shape[1:], np.nan)
    dissected = [n for n in layers if all(n in t.children for t in stores.values())]
    if not dissected:
        raise AdversarialError(f"--dissection: none of the layers {layers} is dissected in every store")
    for li, name in enumerate(layers):
        if name not in dissected:
            continue
        r = real[name].to_dataset().isel(quantile=0)
        concepts = [str(c) for c in r["concept"].values]
        label = _labels(r["label"].values)
        col = np.asarray([concepts.index(c) for c in label])
        units = np.arange(len(label))
        iou_real[li, :len(label)] = r["iou"].values[units, col]
        detector[li, :len(label)] = r["detector"].values
        for b, store in stores.items():
            a = store[name].to_dataset().isel(quantile=0)
            if [str(c) for c in a["concept"].values] != concepts or float(a["quantile"]) != float(r["quantile"]):
                raise AdversarialError(f"--dissection: {name} at budget {b} has other concepts or quantiles than at "
                                       "budget 0: dissect every set with the same settings")
            bi = budgets.index(b)
            label_a = _labels(a["label"].values)
            kept[bi, li, :len(label)] = label_a == label
            iou_adv[bi, li, :len(label)] = a["iou"].values[units, col]
            chance[bi, li] = sum(np.mean(label == c) * np.mean(label_a == c) for c in set(label))
    q = float(real[dissected[0]]["quantile"].values[0])
    dims = ("budget", "layer", "unit")
    return xr.Dataset(
        {"label_kept": (dims, kept, {"description": "the unit's dissection label on real images is its label on the "
                                                    "adversarial ones (1) or not (0)", "quantile": q}),
         "iou_adv": (dims, iou_adv, {"units": "IoU", "description": "IoU of the unit's real-image label on the "
                                                                    "adversarial images (their own thresholds)"}),
         "label_chance": (("budget", "layer"), chance, {"description": "share of units keeping their label if the "
                                                                      "adversarial labels were shuffled across the "
                                                                      "layer's units: sum over concepts of the "
                                                                      "product of their shares"}),
         "iou_real": (("layer", "unit"), iou_real, {"units": "IoU", "description": "IoU of the unit's label on the "
                                                                                   "real images"}),
         "detector_real": (("layer", "unit"), detector, {"description": "the unit is a detector on real images "
                                                                        "(1) or not (0)"})},
        coords={"budget": budgets, "layer": list(layers), "unit": np.arange(width)})


def map_layers(tree: xr.DataTree, layers: list[str], smallest: int = 4) -> list[str]:
    """Up to two layers whose unit maps are shown: the deepest stored as maps of at least ``smallest`` x
    ``smallest`` positions, and the deepest of at least twice that size (in ``layers`` order)."""
    sizes = {n: int(tree[n]["activation"].sizes.get("y", 0)) for n in layers
             if tree[n]["activation"].ndim == 4}
    out = []
    for least in (smallest, 2 * smallest):
        deep = [n for n in layers if sizes.get(n, 0) >= least and n not in out]
        if deep:
            out.append(deep[-1])
    return sorted(out, key=layers.index)


def changed_units(real: xr.DataTree, adv: xr.DataTree, layer: str, where: np.ndarray,
                  examples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``examples`` (indices into the adversarial images), the unit of ``layer`` whose mean response
    changed most from the real image (in SDs of its responses across the real images; units that never vary are
    skipped): its index, the change, and its maps (example, y, x) on the real and on the adversarial image."""
    from .pose import pooled_features

    act_r = real[layer]["activation"].isel(sample=where)
    resp_r = pooled_features(act_r, 1)
    sd = resp_r.std(0)
    live = sd > 1e-3 * (np.median(sd[sd > 0]) if (sd > 0).any() else 1.0)  # not units that fire on one image
    maps_r = np.asarray(act_r.isel(sample=examples).values, np.float32)
    maps_a = np.asarray(adv[layer]["activation"].isel(sample=examples).values, np.float32)
    change = (maps_a.mean((2, 3)) - maps_r.mean((2, 3))) / np.where(live, sd, 1.0)
    score = np.where(live & np.isfinite(change), np.abs(change), -1.0)
    unit = score.argmax(1)
    rows = np.arange(len(examples))
    return unit, change[rows, unit], maps_r[rows, unit], maps_a[rows, unit]


def run_consistency(spec: ConsistencySpec, inputs: dict[str, Any], outputs: dict[str, Path],
                    title: str = "") -> dict[str, str]:
    """Consistency of the units of ``inputs["activations"]`` (the model on the source set) on the adversarial
    sets' activations ``inputs["adversarial"]`` -> store ``out`` and figure ``figure``."""
    from ..figures.adversarial import consistency_figure, unit_maps_figure
    from ..stimuli.store import open_stimuli
    from ..store import open_tree, save_dataset
    from .information import open_layers

    if not 0 < spec.topk < 1:
        raise AdversarialError(f"adversarial.topk = {spec.topk}: give a share of the images in (0, 1)")
    real, layers = open_layers(inputs["activations"], list(spec.layers))
    adv = {_budget_of(path): open_tree(path, "activation store") for path in inputs.get("adversarial") or []}
    if not adv:
        raise AdversarialError("--adversarial: give the model's activations on at least one adversarial set")
    missing = [n for n in layers if any(n not in t.children for t in adv.values())]
    if missing:
        raise AdversarialError(f"adversarial.layers: {missing} not extracted in every adversarial activation store "
                               f"(the real one has {layers})")
    task = str(real.attrs.get("task", ""))
    if not task:
        raise AdversarialError(f"{inputs['activations']}: the activation store names no task (attrs `task`)")
    stimuli = {_budget_of(path): path for path in inputs.get("adversarial_stimuli") or []}
    if set(stimuli) != set(adv):
        raise AdversarialError(f"--adversarial-stimuli: budgets {sorted(stimuli)}, --adversarial: {sorted(adv)}; give "
                               "the adversarial stimulus store of every budget measured")
    ds = consistency(real, adv, layers, spec.topk, task)
    dissections = {_budget_of(path): open_tree(path, "dissection store") for path in inputs.get("dissection") or []}
    if dissections:
        dis = dissection_consistency(dissections, layers, [int(b) for b in ds["budget"].values], ds.sizes["unit"])
        ds = ds.assign({k: dis[k] for k in dis.data_vars})
    model = ds.attrs["model"] = Path(inputs["activations"]).parent.name
    save_dataset(ds, outputs["out"], inputs=[inputs["activations"], *inputs["adversarial"],
                                            *(inputs.get("dissection") or [])])
    consistency_figure(ds, outputs["figure"], title=f"{title or model}: unit semantics on adversarial images")
    top = max(adv)
    examples = _examples(adv[top], 4)
    source = adv[top]["source_sample"].values[examples]
    images = open_stimuli(inputs["stimuli"], require=("image",))["image"].sel(sample=source).values
    attacked = open_stimuli(stimuli[top], require=("image",)).isel(sample=examples)
    if "source_sample" not in attacked.coords or not np.array_equal(attacked["source_sample"].values, source):
        raise AdversarialError(f"{stimuli[top]}: its images are not those of the {top}/255 activations, in order")
    attacked = attacked["image"].values
    where = np.searchsorted(real["sample"].values, adv[top]["source_sample"].values)
    maps = {name: changed_units(real, adv[top], name, where, examples) for name in map_layers(real, layers)}
    unit_maps_figure(images, attacked, maps, top, outputs["maps_figure"],
                     title=f"{title or model}: the units that changed most, {top}/255")
    return consistency_summary(ds)


def _examples(adv: xr.DataTree, k: int) -> np.ndarray:
    """``k`` adversarial images spread evenly, among those that fool the ensemble when any does."""
    from .relevance import people_of, sample_index

    pool = np.arange(adv.sizes["sample"])
    if "success" in adv.coords and np.asarray(adv["success"].values, bool).any():
        pool = pool[np.asarray(adv["success"].values, bool)]
    people = people_of(adv)
    return pool[sample_index(len(pool), k, None if people is None else people[pool])]


def _budget_of(path: str | Path) -> int:
    """The attack budget of a store of an adversarial set (its name ``{set}_adv_{budget}.zarr``)."""
    stem = Path(path).name.removesuffix(".zarr")
    _, sep, tail = stem.rpartition("_adv_")
    if not sep or not tail.isdigit():
        raise AdversarialError(f"{path}: not a store of an adversarial set ({{set}}_adv_{{budget}}.zarr)")
    return int(tail)


def _map_layer_names(ds: xr.Dataset) -> list[str]:
    """The layers of a consistency or comparison store that are maps (not ``pool`` or ``logits``), in order."""
    return [str(n) for n in ds["layer"].values if str(n) not in ("pool", "logits")]


def consistency_summary(ds: xr.Dataset) -> dict[str, str]:
    """Key numbers: at the largest budget, the median response correlation and the top-k overlap of the last map
    layer, and the distance ratio of the logits."""
    top = ds.isel(budget=-1)
    b = int(top["budget"])
    maps = _map_layer_names(ds)
    last = maps[-1] if maps else str(ds["layer"].values[-1])
    out = {f"unit response correlation real vs adversarial at {b}/255 ({last}, median)":
           f"{float(np.nanmedian(top['response_correlation'].sel(layer=last))):.2f}",
           f"top-{ds.attrs['topk']} image overlap at {b}/255 ({last}; chance {ds.attrs['topk'] / ds.attrs['samples']:.2f})":
           f"{float(np.nanmean(top['topk_overlap'].sel(layer=last))):.2f}"}
    if "logits" in ds["layer"].values and np.isfinite(top["distance_ratio"].sel(layer="logits")):
        out[f"distance ratio of the logits at {b}/255"] = f"{float(top['distance_ratio'].sel(layer='logits')):.2f}"
    if "label_kept" in ds:
        dissected = [n for n in maps if np.isfinite(top["label_kept"].sel(layer=n)).any()]
        if dissected:
            deep = dissected[-1]
            out[f"dissection: units keeping their real-image label at {b}/255 ({deep}; shuffled)"] = (
                f"{100 * float(top['label_kept'].sel(layer=deep).mean(skipna=True)):.0f}% "
                f"({100 * float(top['label_chance'].sel(layer=deep)):.0f}%)")
        det = ds["detector_real"].values == 1
        kept = top["label_kept"].values[det]
        out[f"dissection: detectors on real images keeping their label at {b}/255"] = (
            f"{int(np.nansum(kept))} of {int(det.sum())}" + (f" ({100 * np.nanmean(kept):.0f}%)" if det.any() else ""))
    return out


def consistency_key_numbers(path: str | Path) -> dict[str, str]:
    """:func:`consistency_summary` of a finished consistency store."""
    from ..store import open_dataset

    return consistency_summary(open_dataset(path, what="adversarial consistency store").load())


@dataclass(frozen=True)
class CompareSpec:
    """Settings of the comparison across models (config ``adversarial``)."""

    accuracy_margin: float  # points of clean test accuracy within which models count as equally accurate


def clean_accuracy(metrics: str | Path) -> float:
    """A trained model's clean test accuracy (%, its last epoch) from its ``metrics.csv``."""
    import pandas as pd

    table = pd.read_csv(metrics)
    if "test_accuracy" not in table or table.empty:
        raise AdversarialError(f"{metrics}: no test_accuracy column or no epoch (a training stage's metrics.csv?)")
    value = float(table["test_accuracy"].iloc[-1])
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise AdversarialError(f"{metrics}: last test_accuracy {value} is not a share in [0, 1]")
    return 100.0 * value


def compare_models(stores: dict[str, xr.Dataset], summary: xr.Dataset, accuracy: dict[str, float]) -> xr.Dataset:
    """Several models' consistency stores of one set side by side: per model, budget and layer the units' median
    response correlation, mean top-k overlap, mean information about the true class (real and adversarial
    images) and the attack's target, and the distance ratio; per model its clean test accuracy (%) and, per
    budget, the share of the attack's images that fool it (from the attack's ``summary``; NaN for a model it
    did not judge)."""
    if len(stores) < 2:
        raise AdversarialError(f"comparing models needs two consistency stores or more, got {list(stores)}")
    names = list(stores)
    ref = stores[names[0]]
    for m in names[1:]:
        for coord in ("budget", "layer"):
            if not np.array_equal(stores[m][coord].values, ref[coord].values):
                raise AdversarialError(f"model {m}: its consistency store has {coord}s {stores[m][coord].values.tolist()}"
                                       f", {names[0]}'s {ref[coord].values.tolist()}: compare stores of one set and "
                                       "one configuration")
        for key in ("samples", "topk", "task"):
            if stores[m].attrs.get(key) != ref.attrs.get(key):
                raise AdversarialError(f"model {m}: {key} = {stores[m].attrs.get(key)}, {names[0]}: "
                                       f"{ref.attrs.get(key)}: compare stores of the same adversarial sets and settings")
    if summary.attrs.get("samples") is not None and summary.attrs["samples"] != ref.attrs.get("samples"):
        raise AdversarialError(f"the attack's summary counts {summary.attrs['samples']} images, the consistency "
                               f"stores {ref.attrs.get('samples')}: give the summary of the same attack")
    missing = [m for m in names if m not in accuracy]
    if missing:
        raise AdversarialError(f"no clean test accuracy for {missing}")
    budgets = ref["budget"].values
    judged = [str(m) for m in summary["model"].values]
    success = np.full((len(names), len(budgets)), np.nan)
    role = []
    missing = sorted(set(budgets.tolist()) - set(summary["budget"].values.tolist()))
    if missing:
        raise AdversarialError(f"the attack's summary has no budget {missing}: give the summary of the same attack")
    for i, m in enumerate(names):
        if m in judged:
            success[i] = summary["success"].sel(model=m, budget=budgets).values
            role.append(str(summary["role"].sel(model=m).values))
        else:
            role.append("not judged")
    try:
        stacked = xr.concat([stores[m] for m in names], dim=xr.DataArray(names, dims="model", name="model"),
                            coords="minimal", compat="override", join="exact")
    except ValueError as exc:
        raise AdversarialError(f"the consistency stores of {names} do not line up ({exc}): compare stores of one "
                               "set, made with the same layers") from exc
    med = stacked["response_correlation"].median("unit", skipna=True)
    mean = {k: stacked[k].mean("unit", skipna=True) for k in ("topk_overlap", "mi_true", "mi_target")}
    ds = xr.Dataset(
        {"response_correlation": (med.dims, med.values, {"description": "median over units of the correlation of "
                                                                        "their mean response, real vs adversarial"}),
         "topk_overlap": (mean["topk_overlap"].dims, mean["topk_overlap"].values,
                          {"description": "mean over units of the share of their top real images kept",
                           "chance": ref["topk_overlap"].attrs.get("chance", np.nan)}),
         "mi_true": (mean["mi_true"].dims, mean["mi_true"].values,
                     {"units": "bits", "description": "mean unit GCMI with the true class, adversarial images"}),
         "mi_target": (mean["mi_target"].dims, mean["mi_target"].values,
                       {"units": "bits", "description": "mean unit GCMI with the attack's target, adversarial images"}),
         "mi_real": (("model", "layer"), stacked["mi_real"].isel(budget=0).mean("unit", skipna=True).values,
                     {"units": "bits", "description": "mean unit GCMI with the true class, real images"}),
         "distance_ratio": (stacked["distance_ratio"].dims, stacked["distance_ratio"].values,
                            stacked["distance_ratio"].attrs),
         "clean_accuracy": ("model", np.asarray([accuracy[m] for m in names], np.float64),
                            {"units": "%", "description": "clean test accuracy (last epoch)"}),
         "success": (("model", "budget"), success, {"description": "share of the stored adversarial images that "
                                                                   "fool the model"})},
        coords={"model": names, "budget": ("budget", budgets, ref["budget"].attrs), "layer": ref["layer"].values,
                "role": ("model", role, {"description": "the model's part in the attack (member of the ensemble "
                                                         "attacked, or a transfer model)"})},
        attrs={k: ref.attrs[k] for k in ("topk", "samples", "task") if k in ref.attrs})
    if all("label_kept" in s for s in stores.values()):  # every model dissected on real and adversarial images
        det = stacked["detector_real"] == 1
        ds["label_kept"] = stacked["label_kept"].mean("unit", skipna=True).assign_attrs(
            description="share of the units whose real-image dissection label is their label on adversarial images")
        ds["label_chance"] = stacked["label_chance"]
        ds["detectors_kept"] = stacked["label_kept"].where(det).sum("unit").assign_attrs(
            description="real-image detectors keeping their label")
        ds["iou_adv"] = stacked["iou_adv"].mean("unit", skipna=True).assign_attrs(
            units="IoU", description="mean IoU of the units' real-image label on adversarial images")
        ds["iou_real"] = stacked["iou_real"].mean("unit", skipna=True).assign_attrs(
            units="IoU", description="mean IoU of the units' label on real images")
        ds["detectors_real"] = det.sum("unit").assign_attrs(description="detectors on real images")
    return ds


def run_compare(spec: CompareSpec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """The consistency stores ``inputs["consistency"]`` of several models on one set, with their ``metrics``
    (metrics.csv, same order) and the attack's ``summary`` store -> store ``out`` and figure ``figure``."""
    from ..figures.adversarial import compare_figure
    from ..store import open_dataset, save_dataset

    if not 0 <= spec.accuracy_margin <= 100:
        raise AdversarialError(f"adversarial.accuracy_margin = {spec.accuracy_margin}: give points in [0, 100]")
    paths, metrics = list(inputs.get("consistency") or []), list(inputs.get("metrics") or [])
    if len(paths) != len(metrics):
        raise AdversarialError(f"--consistency names {len(paths)} store(s), --metrics {len(metrics)}: give one "
                               "metrics.csv per model, in the same order")
    stores = {}
    for path, table in zip(paths, metrics):
        ds = open_dataset(path, what="adversarial consistency store").load()
        model = str(ds.attrs.get("model") or Path(path).parent.name)
        if model in stores:
            raise AdversarialError(f"{path}: model {model} given twice")
        if Path(table).parent.name != model:
            raise AdversarialError(f"--metrics {table} is not model {model}'s (results/models/{model}/metrics.csv): "
                                   "give them in the order of --consistency")
        stores[model] = ds
    accuracy = {m: clean_accuracy(p) for m, p in zip(stores, metrics)}
    summary_ds = open_dataset(inputs["summary"], what="adversarial summary store").load()
    ds = compare_models(stores, summary_ds, accuracy)
    ds.attrs.update(accuracy_margin=spec.accuracy_margin, source=str(summary_ds.attrs.get("source", "")),
                    targeted=int(summary_ds.attrs.get("targeted", 1)), attack=str(summary_ds.attrs.get("attack", "")))
    save_dataset(ds, outputs["out"], inputs=[*paths, *metrics, str(inputs["summary"])])
    compare_figure(ds, outputs["figure"], title=f"{title or ds.attrs['source']}: the units of "
                                                 f"{', '.join(stores)} on the same adversarial images")
    return compare_summary(ds)


def compare_summary(ds: xr.Dataset) -> dict[str, str]:
    """Key numbers: per model at the largest budget, its clean accuracy, the share of images fooling it and its
    last map layer's median response correlation and top-k overlap; whether the models are equally accurate."""
    top = ds.isel(budget=-1)
    b = int(top["budget"])
    maps = _map_layer_names(ds)
    last = maps[-1] if maps else str(ds["layer"].values[-1])
    out = {}
    for m in ds["model"].values:
        t = top.sel(model=m)
        fooled = float(t["success"])
        out[f"{m}: clean test accuracy"] = f"{float(t['clean_accuracy']):.1f}%"
        out[f"{m}: fooled at {b}/255"] = "not judged" if np.isnan(fooled) else f"{100 * fooled:.1f}%"
        out[f"{m}: unit response correlation at {b}/255 ({last}, median)"] = \
            f"{float(t['response_correlation'].sel(layer=last)):.2f}"
        out[f"{m}: top-{ds.attrs.get('topk', 'k')} image overlap at {b}/255 ({last})"] = \
            f"{float(t['topk_overlap'].sel(layer=last)):.2f}"
        if "label_kept" in ds:
            dissected = [n for n in maps if np.isfinite(t["label_kept"].sel(layer=n))]
            if dissected:
                out[f"{m}: units keeping their dissection label at {b}/255 ({dissected[-1]}; shuffled)"] = (
                    f"{100 * float(t['label_kept'].sel(layer=dissected[-1])):.0f}% "
                    f"({100 * float(t['label_chance'].sel(layer=dissected[-1])):.0f}%)")
            n, kept = int(t["detectors_real"].sum()), int(t["detectors_kept"].sum())
            out[f"{m}: real-image detectors keeping their dissection label at {b}/255"] = (
                f"{kept} of {n}" + (f" ({100 * kept / n:.0f}%)" if n else ""))
    acc = ds["clean_accuracy"].values
    gap = float(acc.max() - acc.min())
    margin = float(ds.attrs.get("accuracy_margin", np.nan))
    out["largest gap in clean accuracy"] = (f"{gap:.1f} points ({'within' if gap <= margin else 'beyond'} the "
                                            f"{margin:g}-point margin)")
    return out


def compare_key_numbers(path: str | Path) -> dict[str, str]:
    """:func:`compare_summary` of a finished comparison store."""
    from ..store import open_dataset

    return compare_summary(open_dataset(path, what="adversarial comparison store").load())
