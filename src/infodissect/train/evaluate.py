"""Evaluation of a trained model on another stimulus set, typically people it never saw.

A gender, age-group, ethnicity or expression classifier trained on a few identities
can score well on new pictures of those identities by recognising the people; only a
set of held-out identities (``pool: heldout``, see :mod:`infodissect.stimuli.design`)
tells whether it reads the factor itself. :func:`evaluate_model` runs the model over
such a set with the training loop's own :func:`~.loop.evaluate` and label mapping
(:func:`~.data.task_labels`) and returns accuracy, chance levels, per-class accuracy,
the confusion matrix and accuracy by factor level; :func:`write_json` stores them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..store import open_group, write_text
from .data import DataError, StoreBatches, task_labels

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """The model cannot be evaluated on this set (a class it never saw, an identity model on new people)."""


def _factor_values(path: str | Path, name: str) -> np.ndarray | None:
    """A factor column of a stimulus store or design table (``None`` if it has none)."""
    group = open_group(path, "stimulus store")
    return np.asarray(group[name][:]) if name in group else None


def classes_seen(train: str | Path, task: str, classes: tuple[str, ...]) -> list[str]:
    """The classes of ``classes`` that occur in the training set (stored set or design table), in class order."""
    index = task_labels(train, task, classes).index
    return [classes[i] for i in np.unique(index).tolist()]


def scores(truth: np.ndarray, preds: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, chance levels, per-class accuracy and confusion matrix of predictions.

    Parameters
    ----------
    truth, preds
        Class indices (into ``classes``) of each sample: the true class and the model's answer.
    classes
        The model's classes, in output order.

    Returns
    -------
    dict
        ``accuracy``; ``chance`` (the accuracy of always answering the set's most frequent
        class, the best an image-blind guess can do); ``balanced_accuracy`` (mean over
        the classes present of their accuracy) and its chance ``chance_balanced``
        (1 / classes present); ``per_class`` ({class, n, accuracy}, classes present);
        ``confusion`` ({classes, matrix}: rows true class, columns answer, counts).
    """
    truth, preds = np.asarray(truth, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if truth.shape != preds.shape or truth.size == 0:
        raise EvaluationError(f"need as many predictions as labels, at least one (got {truth.size}, {preds.size})")
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, preds), 1)
    counts = confusion.sum(1)
    present = np.flatnonzero(counts)
    recall = np.diag(confusion)[present] / counts[present]
    return {
        "n": int(truth.size),
        "accuracy": float(np.mean(truth == preds)),
        "chance": float(counts.max() / truth.size),
        "balanced_accuracy": float(recall.mean()),
        "chance_balanced": float(1.0 / len(present)),
        "per_class": [{"class": classes[c], "n": int(counts[c]), "accuracy": float(r)}
                      for c, r in zip(present, recall)],
        "confusion": {"classes": list(classes), "matrix": confusion.tolist(),
                      "rows": "true class", "columns": "model's answer"},
    }


def evaluate_model(model_path: str | Path, stimuli: str | Path, train: str | Path, *, name: str = "",
                   batch_size: int = 64, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Evaluate the trained model ``model_path`` on the stimulus set ``stimuli``.

    Parameters
    ----------
    model_path
        ``model.pt`` of the training stage.
    stimuli
        The rendered stimulus store to evaluate on (e.g. ``results/stimuli/heldout.zarr``).
    train
        The model's training set, stored or as its design table: which classes the
        model saw, and which identities it was trained on.
    name
        The model's name (default: the name of ``model_path``'s directory).
    batch_size, device
        Forward passes: images per batch, torch device.

    Returns
    -------
    dict
        The numbers of :func:`scores`, plus ``model``, ``task``, ``set``, ``store``,
        ``pool`` (of the set), ``loss`` (mean cross-entropy, nats), ``identities``
        (how many people the set shows), ``shared_identities`` (how many of them the
        model was trained on: 0 for a held-out set) and ``by_factor`` (accuracy per
        level of each categorical factor and per quantile bin of each continuous one).

    Raises
    ------
    EvaluationError
        For an identity model on a set of other people, or a set with a class the
        model never saw in training.
    """
    from ..activations.extract import load_trained
    from ..stimuli.store import open_stimuli
    from .loop import accuracy_by_factor, evaluate

    store = open_stimuli(stimuli, require=("image",))
    model, meta = load_trained(model_path, device)
    task, classes = str(meta["task"]), tuple(str(c) for c in meta["classes"])
    name = name or Path(model_path).parent.name
    set_name, pool = str(store.attrs.get("set", Path(stimuli).stem)), str(store.attrs.get("pool", "train"))
    if task == "identity" and pool == "heldout":
        raise EvaluationError(f"{stimuli}: model {name} tells identities apart, and set {set_name!r} shows other "
                              "people (pool: heldout), whom it has no class for; evaluate it on its test set")
    try:
        labels = task_labels(stimuli, task, classes)
    except DataError as exc:
        raise EvaluationError(f"{exc} (model {name}, classes {', '.join(classes)})") from exc
    seen = classes_seen(train, task, classes)
    unseen = sorted({classes[i] for i in labels.index.tolist()} - set(seen), key=classes.index)
    if unseen:
        raise EvaluationError(f"{stimuli}: set {set_name!r} has {task} class(es) {unseen} that model {name} never saw "
                              f"in training (its training set {train} has {seen}); its accuracy on them says "
                              "nothing about the factor")
    if store.sizes["sample"] < 1:
        raise EvaluationError(f"{stimuli}: an empty set")
    batches = StoreBatches(stimuli, labels, batch_size, shuffle=False, drop_last=False)
    loss, _, preds = evaluate(model, batches, torch.device(device))
    ids, trained_ids = _factor_values(stimuli, "identity"), _factor_values(train, "identity")
    people = np.unique(ids).tolist() if ids is not None else []
    shared = len(np.intersect1d(people, np.unique(trained_ids))) if trained_ids is not None else 0
    result: dict[str, Any] = {"model": name, "task": task, "set": set_name, "store": str(stimuli), "pool": pool,
                              "train": str(train), "classes": list(classes), "classes_seen": seen,
                              "loss": float(loss), "identities": len(people), "shared_identities": shared}
    result.update(scores(labels.index, preds, classes))
    result["by_factor"] = accuracy_by_factor(stimuli, labels.index, preds)
    log.info("%s on %s (%s pool, %d people, %d shared with training): accuracy %.3f (chance %.3f), balanced %.3f "
             "(chance %.3f), n = %d", name, set_name, pool, len(people), shared, result["accuracy"], result["chance"],
             result["balanced_accuracy"], result["chance_balanced"], result["n"])
    return result


def write_json(result: dict[str, Any], out: str | Path) -> Path:
    """Write ``result`` to ``out`` as JSON, whole or not at all (written beside it, then renamed)."""
    return write_text(out, json.dumps(result, indent=1))
