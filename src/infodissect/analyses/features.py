"""Hidden layers and the diagnostic features: how each layer carries the shape and texture features the network uses.

The reverse-correlation maps (:mod:`.revcorr`) give, per base identity, the vertices
whose 3-D shape and RGB albedo drive the network's identity evidence. Their
*classification image* (each significant vertex component's correlation with the
evidence) projected onto each revcorr image gives one scalar per image and kind: how
much of the diagnostic shape (texture) feature the image carries. Per layer and unit
(spatially averaged), within each identity and then averaged over identities:

- ``mi`` (layer, feature): MI between the unit and the feature (mean and max over units);
- ``coinfo`` (layer, feature): co-information of unit, feature and the network's
  decision (its identity logit), I(unit; feature | decision) - I(unit; feature):
  negative = the unit carries the feature redundantly with the decision, positive =
  synergistically (mean over units).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import xarray as xr

from ..info import coinfo_ggg, copnorm, mi_gg_pairs
from ..stimuli.design import sample_codes

log = logging.getLogger(__name__)

KINDS = ("shape", "texture")


def classification_image(field: np.ndarray, evidence: np.ndarray, significant: np.ndarray) -> np.ndarray:
    """(vertex, d) correlation of each vertex component with the evidence, zero off the significant vertices."""
    z = (field - field.mean(0)) / np.where(field.std(0) > 0, field.std(0), np.inf)
    e = (evidence - evidence.mean()) / max(float(evidence.std()), 1e-12)
    r = np.einsum("nvd,n->vd", z, e) / len(e)
    return r * significant[:, None]


def feature_values(field: np.ndarray, image: np.ndarray) -> np.ndarray:
    """(sample,) projection of each sample's z-scored field onto a classification image."""
    z = (field - field.mean(0)) / np.where(field.std(0) > 0, field.std(0), np.inf)
    return np.einsum("nvd,vd->n", z, image)


def diagnostic_features(fields: dict[str, xr.DataArray], evidence: xr.DataArray, identity: np.ndarray,
                        maps: xr.Dataset) -> xr.Dataset:
    """Per revcorr image, the value of its identity's diagnostic shape and texture features (NaN where none)."""
    out = {k: np.full(len(identity), np.nan) for k in KINDS}
    for i in np.unique(identity):
        sel = np.flatnonzero(identity == i)
        for kind in KINDS:
            sig = maps[f"{kind}_significant"].sel(identity=str(i)).values
            if not sig.any():
                warnings.warn(f"identity {i}: no significant {kind} vertex; its {kind} feature is undefined",
                              RuntimeWarning, stacklevel=2)
                continue
            field = np.asarray(fields[kind].values[sel], dtype=np.float64)
            image = classification_image(field, evidence.values[sel], sig)
            out[kind][sel] = feature_values(field, image)
    return xr.Dataset({f"{k}_feature": ("sample", v) for k, v in out.items()}
                      | {"evidence": ("sample", evidence.values), "identity": ("sample", identity)})


def _within_identity(units: np.ndarray, feats: xr.Dataset, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """MI (P,) and co-information with the decision (P,) per unit, averaged over identities (bits)."""
    mis, cos = [], []
    identity = feats["identity"].values
    for i in np.unique(identity):
        sel = np.flatnonzero(identity == i)
        f = feats[f"{kind}_feature"].values[sel]
        if not np.isfinite(f).all():
            continue
        x = copnorm(units[sel])  # (n, P)
        y = copnorm(f[:, None])
        z = copnorm(feats["evidence"].values[sel][:, None])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # constant (dead) units are NaN, left out below
            mis.append(mi_gg_pairs(x, y)[:, 0])
            p = x.shape[1]
            cos.append(coinfo_ggg(x[:, :, None], np.broadcast_to(y[:, None, :], (len(sel), p, 1)),
                                  np.broadcast_to(z[:, None, :], (len(sel), p, 1))))
    if not mis:
        return np.full(units.shape[1], np.nan), np.full(units.shape[1], np.nan)
    return np.nanmean(np.stack(mis), 0), np.nanmean(np.stack(cos), 0)


def layer_feature_information(tree: xr.DataTree, layers: list[str], feats: xr.Dataset) -> xr.Dataset:
    """Per layer and feature kind: mean and max over units of MI with the feature, and mean co-information."""
    rows = {k: np.full((len(layers), len(KINDS)), np.nan) for k in ("mi", "mi_max", "coinfo")}
    for li, name in enumerate(layers):
        act = tree[name].dataset["activation"]
        units = np.asarray(act.astype(np.float32).mean([d for d in ("y", "x") if d in act.dims]).values, np.float64)
        for ki, kind in enumerate(KINDS):
            mi, co = _within_identity(units, feats, kind)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                rows["mi"][li, ki], rows["mi_max"][li, ki] = np.nanmean(mi), np.nanmax(mi)
                rows["coinfo"][li, ki] = np.nanmean(co)
        log.info("%s: MI with shape / texture feature %.3f / %.3f bits; co-information with decision %.3f / %.3f",
                 name, *rows["mi"][li], *rows["coinfo"][li])
    ds = xr.Dataset({k: (("layer", "feature"), v) for k, v in rows.items()},
                    coords={"layer": np.asarray(layers, dtype=object), "feature": np.asarray(KINDS, dtype=object)})
    for k in ds.data_vars:
        ds[k].attrs["units"] = "bits"
    ds["coinfo"].attrs["description"] = ("I(unit; feature | decision) - I(unit; feature): < 0 redundant with the "
                                         "decision, > 0 synergistic")
    return ds


def feature_analysis(tree: xr.DataTree, maps: xr.Dataset, model, layers: list[str]) -> xr.Dataset:
    """The diagnostic features of a revcorr activation store (from its maps) and every layer's information about them."""
    import json

    from .revcorr import ethnic_groups, identity_evidence, vertex_fields

    root = tree.to_dataset()
    logits = tree["logits"].dataset["activation"].load()
    evidence = identity_evidence(logits, json.loads(tree.attrs.get("classes", "[]")))
    shape, texture = vertex_fields(model, *sample_codes(root), ethnicity=ethnic_groups(root))
    feats = diagnostic_features({"shape": shape, "texture": texture}, evidence,
                                np.asarray(logits["identity"].values), maps)
    ds = layer_feature_information(tree, layers, feats)
    ds["feature_value"] = xr.concat([feats[f"{k}_feature"] for k in KINDS], dim="feature").T
    ds["evidence"] = feats["evidence"]
    ds.attrs.update({k: tree.attrs[k] for k in ("model", "set") if k in tree.attrs})
    return ds
