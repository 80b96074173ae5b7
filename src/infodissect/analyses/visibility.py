"""Factor visibility: is each generative factor in the images at all, and can a network read it?

Every result of the pipeline is "how much does layer L know about factor F"; that is
empty when the images do not carry F. Before trusting a layer profile, check per
factor:

- the pixels: the largest MI of any pixel with the factor (bits) and the share of
  pixel positions whose MI passes the maximum-statistic permutation threshold, from
  the pixel MI store (``results/mi/pixels/{set}.zarr``, :mod:`.information`);
- a classifier: the accuracy of every model the pipeline trained, on held-out
  identities for a task other than identity (the ``heldout.json`` of
  :mod:`infodissect.train.evaluate`, given explicitly), else on the test set (identity models: new
  images of the training identities), next to its chance level.

:func:`factor_visibility` joins both into one labelled Dataset along ``factor`` and
``model``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..config import parse_model_name
from ..faces.factors import FACTORS

HELDOUT = "held-out identities"
TEST = "test set (training identities)"


class VisibilityError(ValueError):
    """An input of the visibility analysis is missing something it needs."""


@dataclass(frozen=True)
class ModelScore:
    """How well one trained model reads its task.

    ``accuracy`` is measured on ``evaluated_on`` (:data:`HELDOUT` or :data:`TEST`) set
    ``set``, of ``n`` images; ``chance`` is the accuracy of always answering that set's
    most frequent class; ``test_accuracy`` is the final test-set accuracy (training
    identities) in either case.
    """

    model: str
    task: str
    accuracy: float
    chance: float
    n: int
    evaluated_on: str
    set: str
    test_accuracy: float


def _majority_share(rows: pd.DataFrame, task: str) -> tuple[float, int]:
    """Share of the most frequent class and sample count, from accuracy_by_factor rows of factor ``task``."""
    sub = rows[rows["factor"] == task]
    if sub.empty:
        return float("nan"), 0
    n = sub["n"].astype(int)
    return float(n.max() / n.sum()), int(n.sum())


def model_score(model_dir: str | Path, heldout: str | Path | None = None) -> ModelScore:
    """The :class:`ModelScore` of a trained model's directory (``results/models/{model}/``).

    Parameters
    ----------
    model_dir
        Holds ``config.json`` (task), ``metrics.csv`` (final test accuracy) and
        ``accuracy_by_factor.csv`` (test-set class counts).
    heldout
        The model's held-out evaluation (``heldout.json``), scored instead of the test set;
        ``None`` scores the test set, whatever the directory holds (a ``heldout.json`` left by
        an earlier run with another config is not taken for a result).
    """
    d = Path(model_dir)
    try:
        config = json.loads((d / "config.json").read_text())
        metrics = pd.read_csv(d / "metrics.csv")
        by_factor = pd.read_csv(d / "accuracy_by_factor.csv")
    except (OSError, ValueError) as exc:
        raise VisibilityError(f"{d}: not a trained model's directory ({exc})") from exc
    task = str(config.get("spec", {}).get("task") or parse_model_name(d.name)[0])
    test_accuracy = float(metrics["test_accuracy"].iloc[-1])
    if heldout is not None:
        try:
            h = json.loads(Path(heldout).read_text())
            return ModelScore(d.name, task, float(h["accuracy"]), float(h["chance"]), int(h["n"]), HELDOUT,
                              str(h["set"]), test_accuracy)
        except (OSError, ValueError, KeyError) as exc:
            raise VisibilityError(f"{heldout}: not a held-out evaluation of {d.name} ({exc!r})") from exc
    chance, n = _majority_share(by_factor, task)
    test_set = Path(str(config.get("test_store", ""))).stem
    return ModelScore(d.name, task, test_accuracy, chance, n, TEST, test_set, test_accuracy)


def pixel_visibility(pixels: xr.Dataset) -> xr.Dataset:
    """Per factor, how visible it is in the pixels, from a pixel MI result (group ``pixels`` of an MI store).

    Parameters
    ----------
    pixels
        ``mi`` and ``significant`` (factor, [channel,] y, x), ``threshold`` (factor), in bits.

    Returns
    -------
    xarray.Dataset
        Along ``factor``: ``max_mi`` (largest MI of any pixel and channel, bits),
        ``share_significant`` (share of pixel positions (y, x) where the MI of at
        least one channel passes the threshold) and ``threshold`` (bits); coordinate
        ``given``: the factor a graded one was measured given ("" = marginally; see
        :mod:`.information`).
    """
    missing = [v for v in ("mi", "significant", "threshold") if v not in pixels]
    if missing:
        raise VisibilityError(f"pixel MI result lacks {missing} (is it an MI store's `pixels` group?)")
    variables = [d for d in pixels["mi"].dims if d != "factor"]
    positions = [d for d in ("y", "x") if d in variables] or variables
    others = [d for d in variables if d not in positions]
    significant = pixels["significant"].any(others) if others else pixels["significant"]
    factors = np.asarray([str(f) for f in pixels["factor"].values], dtype=object)
    out = xr.Dataset({
        "max_mi": pixels["mi"].max(variables).astype(np.float64),
        "share_significant": significant.mean(positions).astype(np.float64),
        "threshold": pixels["threshold"].astype(np.float64),
    }).assign_coords(factor=factors)
    given = pixels["given"].values if "given" in pixels.coords else [""] * len(factors)
    out = out.assign_coords(given=("factor", np.asarray([str(g) for g in given], dtype=object)))
    out["max_mi"].attrs.update(units="bits", description="largest MI of any pixel (any channel) with the factor")
    out["share_significant"].attrs.update(
        units="share", description="share of pixel positions where at least one channel's MI passes the threshold")
    out["threshold"].attrs.update(units="bits", description="maximum-statistic permutation threshold (FWER alpha)")
    return out


def factor_visibility(pixels: xr.Dataset | None, models: list[ModelScore]) -> xr.Dataset:
    """The factor visibility table: pixel MI per factor and classifier accuracy per trained model.

    Parameters
    ----------
    pixels
        The pixel MI result (see :func:`pixel_visibility`), or ``None`` when the pixels
        were not measured (the ``factor`` part is then empty).
    models
        One :class:`ModelScore` per trained model.

    Returns
    -------
    xarray.Dataset
        Along ``factor``: ``max_mi``, ``share_significant``, ``threshold`` (see
        :func:`pixel_visibility`), ``factor_kind``, ``intrinsic`` and coordinate ``given``. Along ``model``:
        ``task``, ``accuracy``, ``chance``, ``n``, ``evaluated_on``, ``eval_set``,
        ``test_accuracy``. Attrs of the pixel store (``set``, ``n_samples``,
        ``n_perm``, ``alpha``) are kept.
    """
    if pixels is not None:
        part = pixel_visibility(pixels)
    else:
        empty = xr.DataArray(np.zeros(0), dims="factor")
        part = xr.Dataset({"max_mi": empty, "share_significant": empty, "threshold": empty},
                          coords={"factor": np.asarray([], dtype=object), "given": ("factor", np.asarray([], dtype=object))})
    names = [str(f) for f in part["factor"].values]
    part["factor_kind"] = ("factor", np.asarray([FACTORS[f].kind if f in FACTORS else "" for f in names], dtype=object))
    part["intrinsic"] = ("factor", np.asarray([bool(FACTORS[f].intrinsic) if f in FACTORS else False for f in names],
                                              dtype=bool))
    text = lambda values: np.asarray(values, dtype=object)  # noqa: E731 - Zarr v3 stores object text as strings
    by_model = xr.Dataset(
        {
            "task": ("model", text([m.task for m in models])),
            "accuracy": ("model", np.asarray([m.accuracy for m in models], dtype=np.float64)),
            "chance": ("model", np.asarray([m.chance for m in models], dtype=np.float64)),
            "n": ("model", np.asarray([m.n for m in models], dtype=np.int64)),
            "evaluated_on": ("model", text([m.evaluated_on for m in models])),
            "eval_set": ("model", text([m.set for m in models])),
            "test_accuracy": ("model", np.asarray([m.test_accuracy for m in models], dtype=np.float64)),
        },
        coords={"model": text([m.model for m in models])},
    )
    by_model["accuracy"].attrs.update(
        units="share", description=f"accuracy on {HELDOUT} for every task but identity (on the {TEST} for identity, "
                                   "or without a held-out set): see evaluated_on")
    by_model["chance"].attrs.update(units="share", description="accuracy of always answering the most frequent class "
                                    "of the evaluated set")
    by_model["test_accuracy"].attrs.update(units="share", description=f"final accuracy on the {TEST}")
    ds = xr.merge([part, by_model], combine_attrs="drop")
    for name in ds.data_vars:  # merge keeps no attrs: give each variable its own back
        ds[name].attrs.update((part if name in part else by_model)[name].attrs)
    if pixels is not None:
        ds.attrs.update({k: v for k, v in pixels.attrs.items() if k in ("set", "source", "n_samples", "n_perm",
                                                                         "alpha", "estimator") and
                         isinstance(v, (str, int, float))})
    ds.attrs["pixels"] = "measured" if pixels is not None else "not measured (mi.pixels: false or no mi.sets)"
    return ds


def invisible_factors(ds: xr.Dataset) -> list[str]:
    """The factors of a visibility Dataset with no pixel position above the permutation threshold."""
    share = ds["share_significant"]
    return [str(f) for f, s in zip(ds["factor"].values, share.values) if not s > 0]


@dataclass(frozen=True)
class Spec:
    """Factor visibility has no settings (its pixel set is the first of ``mi.sets``, chosen by the workflow)."""


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """Factor visibility from a pixel MI store (``pixels``, optional), trained models' directories (``models``)
    and their held-out evaluations (``heldout``) -> store ``out`` and ``figure``."""
    from ..figures.visibility import visibility_figure
    from ..store import open_tree, save_dataset
    from .information import PIXELS

    log = logging.getLogger(__name__)
    pixels = None
    if inputs.get("pixels"):
        tree = open_tree(inputs["pixels"], "pixel MI store")
        if PIXELS not in tree.children:
            raise VisibilityError(f"{inputs['pixels']}: no `{PIXELS}` group (is it a pixel MI store, "
                                  "results/mi/pixels/{set}.zarr?)")
        pixels = tree[PIXELS].to_dataset()
    models = list(inputs.get("models") or [])
    heldout = {Path(h).parent.name: h for h in inputs.get("heldout") or []}
    unknown = sorted(set(heldout) - {Path(d).name for d in models})
    if unknown:
        raise VisibilityError(f"--heldout: no --models directory for {', '.join(unknown)}")
    ds = factor_visibility(pixels, [model_score(d, heldout.get(Path(d).name)) for d in models])
    save_dataset(ds, outputs["out"], inputs=[p for p in [inputs.get("pixels"), *heldout.values()] if p])
    visibility_figure(ds, outputs["figure"], title=title)
    if pixels is not None:
        log.info("factors with no pixel above the threshold: %s", ", ".join(invisible_factors(ds)) or "none")
    for m in ds["model"].values:
        row = ds.sel(model=m)
        log.info("%s: accuracy %.3f on %s (chance %.3f)", m, float(row["accuracy"]), str(row["evaluated_on"].values),
                 float(row["chance"]))
    return {}
