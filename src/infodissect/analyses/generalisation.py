"""The generalisation test (Xu et al. 2018): does the network keep an identity when its shape or its texture changes?

On a morph set, face A's shape code, texture code or both move towards face B's
(level 0 = A, 1 = B, > 1 beyond B, < 0 an exaggerated A). From the network's logits
on every morph we read the probability it gives A (the original identity) and B,
which identity it picks, and summarise per (morph type, level) over pairs. The
headline statistic is the *tolerance*: the mean probability of A over the levels in
(0, 1], per pair and type; the shape - texture difference of tolerance across pairs,
with a sign-flip permutation p-value, says whether the network is more tolerant of
shape change than of texture change.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

MORPH_TYPES = ("shape", "texture", "both")


class MorphError(ValueError):
    """The store is not a morph set with the network's logits."""


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def morph_responses(logits: xr.DataArray, classes: list[str], task: str = "identity") -> xr.Dataset:
    """Per morph: P(original A), P(target B), the picked identity and whether it is A, B or another.

    ``logits`` is the ``logits`` layer (sample, unit) of a morph set's activation store,
    with the coords ``identity`` (A), ``morph_target`` (B), ``morph_type``, ``morph_level``.
    """
    if task != "identity":
        raise MorphError(f"the generalisation test needs an identity network; this one's task is {task!r}")
    missing = [c for c in ("identity", "morph_target", "morph_type", "morph_level") if c not in logits.coords]
    if missing:
        raise MorphError(f"not a morph set: coordinate(s) {missing} missing")
    index = {str(c): i for i, c in enumerate(classes)}
    src = [str(v) for v in np.asarray(logits["identity"].values).tolist()]
    dst = [str(v) for v in np.asarray(logits["morph_target"].values).tolist()]
    unknown = sorted({v for v in src + dst if v not in index})
    if unknown:
        raise MorphError(f"identities {unknown} of the morph set are not classes of the network")
    a = np.asarray([index[v] for v in src])
    b = np.asarray([index[v] for v in dst])
    prob = _softmax(np.asarray(logits.values, dtype=np.float64))
    rows = np.arange(len(a))
    pick = prob.argmax(axis=1)
    pair = np.unique(np.stack([a, b], 1), axis=0, return_inverse=True)[1].reshape(-1)
    return xr.Dataset(
        {"p_original": ("sample", prob[rows, a]), "p_target": ("sample", prob[rows, b]),
         "picked": ("sample", np.asarray([str(classes[k]) for k in pick], dtype=object)),
         "picks_original": ("sample", pick == a), "picks_target": ("sample", pick == b),
         "picks_other": ("sample", (pick != a) & (pick != b)),
         "pair": ("sample", pair)},
        coords={"sample": logits["sample"].values,
                "morph_type": ("sample", np.asarray([str(v) for v in logits["morph_type"].values.tolist()],
                                                    dtype=object)),
                "morph_level": ("sample", np.asarray(logits["morph_level"].values, dtype=np.float64))},
    )


def _tolerance(resp: xr.Dataset, kind: str) -> np.ndarray:
    """Mean P(original) over levels in (0, 1], per pair, for one morph type (NaN where absent)."""
    n_pairs = int(resp["pair"].max()) + 1
    level = resp["morph_level"].values
    sel = (resp["morph_type"].values == kind) & (level > 0) & (level <= 1)
    out = np.full(n_pairs, np.nan)
    for p in range(n_pairs):
        m = sel & (resp["pair"].values == p)
        if m.any():
            out[p] = resp["p_original"].values[m].mean()
    return out


def sign_flip_pvalue(d: np.ndarray, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of mean(d) = 0 (paired differences)."""
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_perm, len(d)))
    null = np.abs((signs * d).mean(axis=1))
    return float((1 + np.sum(null >= abs(d.mean()) - 1e-12)) / (n_perm + 1))


def summarise(resp: xr.Dataset, seed: int = 0) -> xr.Dataset:
    """Curves per (morph type, level) with 95% intervals over pairs, and the shape - texture tolerance test."""
    kinds = [k for k in MORPH_TYPES if k in set(resp["morph_type"].values.tolist())]
    levels = np.unique(resp["morph_level"].values)
    names = ("p_original", "p_target", "picks_original", "picks_target", "picks_other")
    mean = {n: np.full((len(kinds), len(levels)), np.nan) for n in names}
    sem = {n: np.full((len(kinds), len(levels)), np.nan) for n in names}
    count = np.zeros((len(kinds), len(levels)), dtype=np.int64)
    for i, k in enumerate(kinds):
        for j, lev in enumerate(levels):
            m = (resp["morph_type"].values == k) & (resp["morph_level"].values == lev)
            count[i, j] = m.sum()
            for n in names:
                v = np.asarray(resp[n].values[m], dtype=np.float64)
                if len(v):
                    mean[n][i, j] = v.mean()
                    sem[n][i, j] = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.nan
    coords = {"morph_type": np.asarray(kinds, dtype=object), "morph_level": levels}
    dims = ("morph_type", "morph_level")
    ds = xr.Dataset({n: (dims, mean[n]) for n in names} | {f"{n}_sem": (dims, sem[n]) for n in names}
                    | {"count": (dims, count)}, coords=coords)
    tol = np.stack([_tolerance(resp, k) for k in kinds])
    ds["tolerance"] = (("morph_type", "pair"), tol)
    ds["tolerance"].attrs["description"] = "mean P(original identity) over morph levels in (0, 1], per pair"
    if "shape" in kinds and "texture" in kinds:
        d = tol[kinds.index("shape")] - tol[kinds.index("texture")]
        gap = float(np.nanmean(d))
        ds.attrs.update(shape_minus_texture_tolerance=gap, p_value=sign_flip_pvalue(d, seed=seed),
                        n_pairs=int(np.isfinite(d).sum()),
                        finding=("more tolerant of shape change than of texture change" if gap > 0
                                 else "more tolerant of texture change than of shape change"))
    ds.attrs["test"] = "two-sided sign-flip permutation test over pairs of the shape - texture tolerance"
    for n in names:
        ds[n].attrs["units"] = "probability" if n.startswith("p_") else "share of morphs"
    return ds


def generalisation(tree: xr.DataTree) -> tuple[xr.Dataset, xr.Dataset]:
    """Per-morph responses and their summary from a morph set's activation store (its ``logits`` layer)."""
    if "logits" not in tree.children:
        raise MorphError("the activation store has no logits layer (add it to activations.layers)")
    classes = json.loads(tree.attrs.get("classes", "[]"))
    logits = tree["logits"].dataset["activation"].load()
    resp = morph_responses(logits, classes, str(tree.attrs.get("task", "identity")))
    summary = summarise(resp)
    meta: dict[str, Any] = {k: tree.attrs[k] for k in ("model", "set") if k in tree.attrs}
    resp.attrs.update(meta)
    summary.attrs.update(meta)
    return resp, summary


@dataclass(frozen=True)
class Spec:
    """The generalisation test has no settings (its morph set is chosen by the workflow)."""


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """The generalisation test on a morph set's activations -> store ``out`` (summary, /responses) and ``figure``."""
    from ..figures.generalisation import generalisation_figure
    from ..store import atomic_store, open_tree, write_tree

    responses, summ = generalisation(open_tree(inputs["activations"], "activation store"))
    with atomic_store(outputs["out"], inputs=[inputs["activations"]]) as tmp:
        write_tree(xr.DataTree.from_dict({"/": summ, "/responses": responses}), tmp)
    generalisation_figure(summ, outputs["figure"], title=f"{title}: generalisation under shape vs texture change")
    logging.getLogger(__name__).info("generalisation: %s", {k: summ.attrs[k] for k in summ.attrs if k != "test"})
    return summary(summ)


def summary(g: xr.Dataset) -> dict[str, str]:
    """The test's key numbers: tolerance to shape and to texture change, and their gap."""
    if "shape_minus_texture_tolerance" not in g.attrs:
        return {}
    tol = g["tolerance"].mean("pair")
    return {"tolerance to shape / texture change": (
                f"{float(tol.sel(morph_type='shape')):.2f} / {float(tol.sel(morph_type='texture')):.2f}"),
            "generalisation gap (shape - texture)": (
                f"{g.attrs['shape_minus_texture_tolerance']:+.2f} (p = {g.attrs['p_value']:.3g}, "
                f"{g.attrs['n_pairs']} pairs): {g.attrs['finding']}")}


def key_numbers(path: str | Path) -> dict[str, str]:
    """:func:`summary` of a finished generalisation store."""
    from ..store import open_dataset

    return summary(open_dataset(path, what="generalisation store"))
