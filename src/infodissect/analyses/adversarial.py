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
    for name, m in models.items():
        if isinstance(m, Ensemble):
            known = [next((logits[k] for k, v in models.items() if v is member and k in logits), None)
                     for member in m.members]
            logits[name] = (torch.stack([z if z is not None else member(x) for z, member in zip(known, m.members)])
                            .mean(0))
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


def adversarial_set(stim: xr.Dataset, index: np.ndarray, result: dict[str, np.ndarray], target: np.ndarray | None,
                    classes: list[str], attrs: dict[str, Any]) -> xr.Dataset:
    """The stimulus store of one budget: the source samples ``index`` of ``stim`` (loaded) with the
    adversarial images and the attack's coordinates along ``sample``."""
    ds = stim.isel(sample=index).copy()
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
    from ..store import open_group, save_dataset
    from .relevance import sample_index, true_classes

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
    index = sample_index(int(stim.sizes["sample"]), spec.samples)
    images = np.asarray(open_group(where, "stimulus store")["image"].oindex[index])
    true = true_classes(stim[task].values[index], classes, task, where)
    target = target_classes(true, stim["sample"].values[index], len(classes), spec.seed) if spec.targeted else None
    ensemble = Ensemble([loaded[m][0] for m in members]).eval()
    judges: dict[str, nn.Module] = {m: loaded[m][0] for m in members}
    judges[ENSEMBLE] = ensemble
    judges.update({k: v[0] for k, v in loaded.items() if k not in members})
    source = stim.isel(sample=index).load() if len(index) < stim.sizes["sample"] else stim.load()
    local = np.arange(len(index))
    results = {}
    for budget, out in zip(spec.budgets, outs):
        res = attack_images(ensemble, judges, images, true, target, spec, budget)
        results[budget] = res
        attrs = {"adversarial": json.dumps({"source": Path(where).name, "budget": budget, "attack": spec.attack,
                                            "steps": spec.steps, "targeted": spec.targeted, "ensemble": members,
                                            "task": task, "seed": spec.seed}, sort_keys=True)}
        save_dataset(adversarial_set(source, local, res, target, classes, attrs), out,
                     inputs=[where, *inputs["models"]])
        log.info("budget %d/255: ensemble fooled on %.1f%% of %d images (stored uint8)", budget,
                 100 * res["rounded"][ENSEMBLE].mean(), len(index))
    ds = summary_dataset(results, list(judges), members)
    ds.attrs.update(source=Path(where).name, attack=spec.attack, steps=spec.steps, targeted=int(spec.targeted),
                    task=task, samples=len(index))
    save_dataset(ds, outputs["summary"], inputs=[where, *inputs["models"]])
    top = max(spec.budgets)
    shown = sample_index(len(index), 4)
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
