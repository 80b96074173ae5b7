"""Summaries of an MI store: the layer profile (pixels to logits) and per-unit factor selectivity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..faces.factors import FACTORS

STATISTICS = {
    "max_mi": "largest MI of any unit at any position (bits)",
    "max_mi_pooled": "largest MI of any unit's spatially averaged response (bits)",
    "mean_mi_pooled": "mean over units of the MI of their spatially averaged response (bits)",
    "q90_mi_pooled": "90th percentile over units of the pooled MI (bits)",
    "share_significant": "share of units whose pooled MI exceeds the permutation threshold",
    "share_significant_positions": "share of (unit, position) variables above the resolved threshold",
}


def _variables(da: xr.DataArray) -> list[str]:
    return [d for d in da.dims if d != "factor"]


def layer_summary(ds: xr.Dataset) -> xr.Dataset:
    """The statistics of :data:`STATISTICS` for one layer's MI result, per factor."""
    pooled = ds["mi_pooled"]
    units = _variables(pooled)
    out = xr.Dataset({
        "max_mi": ds["mi"].max(_variables(ds["mi"])),
        "max_mi_pooled": pooled.max(units),
        "mean_mi_pooled": pooled.mean(units),
        "q90_mi_pooled": pooled.quantile(0.9, units).drop_vars("quantile"),
        "share_significant": ds["significant_pooled"].mean(units),
        "share_significant_positions": ds["significant"].mean(_variables(ds["significant"])),
    })
    return out.astype(np.float64)


def layer_profile(layers: dict[str, xr.Dataset]) -> xr.Dataset:
    """Per (layer, factor) summaries of several layers' MI results, layers in the given order (input first)."""
    if not layers:
        raise ValueError("no layers to profile")
    parts = [layer_summary(ds) for ds in layers.values()]
    factors = parts[0]["factor"].values
    prof = xr.concat([p.sel(factor=factors) for p in parts], dim="layer", coords="minimal", compat="override")
    prof = prof.assign_coords(layer=np.asarray(list(layers), dtype=object),
                              factor=np.asarray([str(f) for f in factors], dtype=object))
    prof["intrinsic"] = ("factor", np.asarray([FACTORS[str(f)].intrinsic if str(f) in FACTORS else False
                                              for f in factors]))
    for name, text in STATISTICS.items():
        prof[name].attrs.update(description=text, units="bits" if "mi" in name else "share")
    return prof


def peak_layer(profile: xr.Dataset, factor: str, statistic: str = "max_mi_pooled") -> str:
    """The layer where ``factor``'s ``statistic`` is largest."""
    values = profile[statistic].sel(factor=factor).values
    return str(profile["layer"].values[int(np.nanargmax(values))])


def unit_order(mi_pooled: xr.DataArray) -> np.ndarray:
    """Unit order for a (factor, unit) matrix: grouped by each unit's most informative factor, then by its MI."""
    values = np.nan_to_num(mi_pooled.transpose("factor", ...).values.reshape(mi_pooled.sizes["factor"], -1))
    best = values.argmax(axis=0)
    peak = values.max(axis=0)
    return np.lexsort((-peak, best))


@dataclass(frozen=True)
class Spec:
    """The layer profile has no settings."""


def run(spec: Spec, inputs: dict[str, Any], outputs: dict[str, Path], title: str = "") -> dict[str, str]:
    """The layer profile store (``out``) and the MI figures (``profile_figure``, ``units_figure``,
    ``maps_figure``) of a model's MI store (``mi``) and, optionally, its set's pixel MI store (``pixels``)."""
    from ..figures.information import layer_profile_figure, spatial_maps_figure, unit_matrix_figure
    from ..store import save_dataset
    from .information import load_layers

    layers = load_layers(inputs["mi"], inputs.get("pixels"))
    prof = layer_profile(layers)
    save_dataset(prof, outputs["out"], inputs=[p for p in (inputs["mi"], inputs.get("pixels")) if p])
    layer_profile_figure(prof, outputs["profile_figure"],
                         title=f"{title}: information about each factor, layer by layer")
    orders = {name: unit_order(ds["mi_pooled"]) for name, ds in layers.items()}
    unit_matrix_figure(layers, orders, outputs["units_figure"],
                       title=f"{title}: unit x factor information (spatially pooled)")
    spatial_maps_figure(layers, outputs["maps_figure"],
                        title=f"{title}: where each factor is represented (max over units, bits)")
    return summary(prof)


def summary(prof: xr.Dataset) -> dict[str, str]:
    """The profile's key numbers: where identity information peaks, on average and in its best unit."""
    if "identity" not in [str(f) for f in prof["factor"].values]:
        return {}
    best = peak_layer(prof, "identity", "mean_mi_pooled")
    best_max = peak_layer(prof, "identity", "max_mi_pooled")
    return {"identity information peaks at (mean over units)": (
                f"{best} ({float(prof['mean_mi_pooled'].sel(layer=best, factor='identity')):.3f} bits)"),
            "most informative identity unit": (
                f"{best_max} ({float(prof['max_mi_pooled'].sel(layer=best_max, factor='identity')):.3f} bits)")}


def key_numbers(path: str | Path) -> dict[str, str]:
    """:func:`summary` of a finished profile store."""
    from ..store import open_dataset

    return summary(open_dataset(path, what="profile store").load())
