"""Reverse correlation (Xu et al. 2018): the 3-D shape and texture features the network uses for each identity.

On the revcorr set every image is a base identity whose shape and texture codes carry
a random perturbation. For each base identity, the network's evidence for it (its
logit) is related to each vertex's 3-D displacement (multivariate GCMI, mvdim
``coord``) and to each vertex's RGB albedo (mvdim ``channel``), over that identity's
images, with maximum-statistic permutation thresholds over all vertices: the
significant vertices are the diagnostic shape and texture features.
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

from ..faces.albedo import texture_gain
from ..faces.mesh import PART_NAMES
from ..faces.model import FaceModel
from ..info import mutual_information
from ..stimuli.design import sample_codes

log = logging.getLogger(__name__)


class RevcorrError(ValueError):
    """The store is not a revcorr set with the network's logits and identity codes."""


def vertex_fields(model: FaceModel, shape_coeff: np.ndarray, texture_coeff: np.ndarray,
                  ethnicity: np.ndarray | None = None) -> tuple[xr.DataArray, xr.DataArray]:
    """Each sample's identity displacement (sample, vertex, coord) and albedo offset (sample, vertex, channel).

    The linear parts of the face model that the identity codes drive (the sigma-scaled
    shape and texture bases); the rest of the face is fixed within an identity. Given each
    sample's ``ethnicity`` (group names), the albedo offset is scaled to the group's skin as
    the renderer scales it (:func:`..faces.albedo.texture_gain`; all texture bands, as the full
    mesh draws them).
    """
    k, t = model.shape_basis.shape[0], model.texture_basis.shape[0]
    if shape_coeff.shape[1] != k or texture_coeff.shape[1] != t:
        raise RevcorrError(f"identity codes have {shape_coeff.shape[1]} shape / {texture_coeff.shape[1]} texture "
                           f"components, the face model {k} / {t}: the store comes from another generator")
    v = model.n_vertices
    with torch.no_grad():
        disp = torch.as_tensor(shape_coeff, dtype=torch.float32) @ (model.shape_basis * model.shape_sigma[:, None])
        alb = torch.as_tensor(texture_coeff, dtype=torch.float32) @ (model.texture_basis * model.texture_sigma[:, None])
    n = shape_coeff.shape[0]
    if ethnicity is not None:
        gain = torch.as_tensor([texture_gain(str(e)) for e in np.asarray(ethnicity)], dtype=torch.float32)
        alb = alb * gain[:, None]
    return (xr.DataArray(disp.numpy().reshape(n, v, 3), dims=("sample", "vertex", "coord"),
                         coords={"coord": np.asarray(["x", "y", "z"], dtype=object)}),
            xr.DataArray(alb.numpy().reshape(n, v, 3), dims=("sample", "vertex", "channel"),
                         coords={"channel": np.asarray(["r", "g", "b"], dtype=object)}))


def ethnic_groups(ds: xr.Dataset) -> np.ndarray | None:
    """Each sample's ethnic group (the ``ethnicity`` coordinate), or None where the store has none."""
    if "ethnicity" not in ds.variables:
        log.warning("no ethnicity coordinate: identity texture offsets are left unscaled by the groups' skin gain")
        return None
    return np.asarray([str(v) for v in ds["ethnicity"].values.tolist()], dtype=object)  # any string dtype


def identity_evidence(logits: xr.DataArray, classes: list[str]) -> xr.DataArray:
    """The network's logit for each sample's own identity (sample,)."""
    index = {str(c): i for i, c in enumerate(classes)}
    ids = [str(v) for v in np.asarray(logits["identity"].values).tolist()]
    unknown = sorted(set(ids) - set(index))
    if unknown:
        raise RevcorrError(f"identities {unknown} of the revcorr set are not classes of the network")
    cols = np.asarray([index[i] for i in ids])
    values = np.asarray(logits.values, dtype=np.float64)[np.arange(len(cols)), cols]
    return xr.DataArray(values, dims="sample", name="evidence", attrs={"units": "logit"})


def feature_maps(shape: xr.DataArray, texture: xr.DataArray, evidence: xr.DataArray, identity: np.ndarray, *,
                 n_perm: int, alpha: float = 0.05, seed: int = 0) -> xr.Dataset:
    """Per base identity: MI (bits) of each vertex's displacement and albedo with the evidence, thresholded.

    Returns ``shape_mi``, ``texture_mi`` (identity, vertex), their ``*_threshold``
    (identity) and ``*_significant`` (identity, vertex).
    """
    ids = np.unique(identity)
    parts: dict[str, list[Any]] = {k: [] for k in ("shape_mi", "shape_threshold", "shape_significant",
                                                  "texture_mi", "texture_threshold", "texture_significant")}
    for i in ids:
        sel = np.flatnonzero(identity == i)
        if len(sel) < 8:
            raise RevcorrError(f"identity {i} has {len(sel)} revcorr images; at least 8 are needed")
        y = xr.Dataset({"evidence": ("sample", evidence.values[sel])})
        for name, field, mv in (("shape", shape, "coord"), ("texture", texture, "channel")):
            res = mutual_information(field.isel(sample=sel), y, mvdim=mv, n_perm=n_perm, alpha=alpha, seed=seed)
            parts[f"{name}_mi"].append(res["mi"].sel(factor="evidence", drop=True).astype(np.float32))
            parts[f"{name}_threshold"].append(res["threshold"].sel(factor="evidence", drop=True))
            parts[f"{name}_significant"].append(res["significant"].sel(factor="evidence", drop=True))
        log.info("identity %s: %d images; max MI shape %.3f, texture %.3f bits", i, len(sel),
                 float(parts["shape_mi"][-1].max()), float(parts["texture_mi"][-1].max()))
    id_coord = np.asarray([str(i) for i in ids], dtype=object)
    ds = xr.Dataset({k: xr.concat(v, dim="identity") for k, v in parts.items()}).assign_coords(identity=id_coord)
    for k in ("shape_mi", "texture_mi", "shape_threshold", "texture_threshold"):
        ds[k].attrs["units"] = "bits"
    ds.attrs.update(n_perm=int(n_perm), alpha=float(alpha), seed=int(seed), evidence="logit of the base identity",
                    estimator="gcmi (mi_gg, 3-D per vertex), maximum-statistic threshold over vertices")
    return ds


def with_mesh(ds: xr.Dataset, model: FaceModel) -> xr.Dataset:
    """``ds`` with the template mesh: vertex positions (vertex, coord), part labels, and faces (face, corner)."""
    t = model.template
    return ds.assign_coords(
        vertex_position=(("vertex", "coord"), np.asarray(t.vertices, dtype=np.float32)),
        vertex_part=("vertex", np.asarray([PART_NAMES[int(p)] for p in t.labels], dtype=object)),
        coord=np.asarray(["x", "y", "z"], dtype=object),
    ).assign(mesh_faces=(("face", "corner"), np.asarray(t.faces, dtype=np.int32)))


def revcorr_analysis(tree: xr.DataTree, model: FaceModel, *, n_perm: int, alpha: float = 0.05,
                     seed: int = 0) -> xr.Dataset:
    """Shape and texture feature maps of every base identity of a revcorr activation store."""
    root = tree.to_dataset()
    missing = [k for k in ("shape_coeff", "texture_coeff") if k not in root]
    if missing or "logits" not in tree.children:
        raise RevcorrError(f"the activation store lacks {missing + ([] if 'logits' in tree.children else ['logits'])}")
    if str(tree.attrs.get("task", "identity")) != "identity":
        raise RevcorrError(f"reverse correlation needs an identity network; this one's task is {tree.attrs['task']!r}")
    logits = tree["logits"].dataset["activation"].load()
    evidence = identity_evidence(logits, json.loads(tree.attrs.get("classes", "[]")))
    shape, texture = vertex_fields(model, *sample_codes(root), ethnicity=ethnic_groups(root))
    ds = feature_maps(shape, texture, evidence, np.asarray(logits["identity"].values), n_perm=n_perm, alpha=alpha,
                      seed=seed)
    ds.attrs.update({k: tree.attrs[k] for k in ("model", "set") if k in tree.attrs})
    return with_mesh(ds, model)


@dataclass(frozen=True)
class Spec:
    """Settings of the revcorr stage (those of the MI stage): permutations, family-wise alpha, seed, Dask scheduler."""

    n_perm: int
    alpha: float
    seed: int
    scheduler: str


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """Feature maps (store ``out``, ``figure``) and every layer's information about them (``features``,
    ``features_figure``) from a revcorr set's activations and its stimulus store."""
    from ..figures.revcorr import features_figure, revcorr_figure
    from ..nets import READOUT_LAYERS
    from ..stimuli.store import open_stimuli
    from ..store import dask_scheduler, open_tree, save_dataset
    from ..faces.model import model_from_config
    from .features import feature_analysis

    tree = open_tree(inputs["activations"], "activation store")
    model = model_from_config(json.loads(open_stimuli(inputs["stimuli"]).attrs["generator"]))
    with dask_scheduler(spec.scheduler, threads=1):
        ds = revcorr_analysis(tree, model, n_perm=spec.n_perm, alpha=spec.alpha, seed=spec.seed)
    feats = feature_analysis(tree, ds, model, [n for n in READOUT_LAYERS if n in tree.children])
    sources = [inputs["activations"], inputs["stimuli"]]
    save_dataset(ds, outputs["out"], inputs=sources)
    save_dataset(feats, outputs["features"], inputs=sources)
    revcorr_figure(ds, outputs["figure"], title=f"{title}: shape and texture features the network uses\n"
                                                "(grey: below the permutation threshold)")
    features_figure(feats, outputs["features_figure"], title=f"{title}: hidden layers and the diagnostic features")
    return {}
