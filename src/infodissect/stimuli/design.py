"""Seeded factor tables ("designs") for each stimulus set.

A design is an ``xarray.Dataset`` along ``sample`` with every generative factor as a
coordinate (continuous ones float32, what the renderer reads) and design-specific
coordinates (sweeps, morphs). Identity codes are normalised: ``identity_shape``
(person, shape_pc) and ``identity_texture`` (person, texture_pc) hold each person's
codes once, ``person`` their global identity indices, and a row refers to its person by
its ``identity`` coordinate. Only designs whose rows have codes of their own (morph,
revcorr) also store ``shape_coeff`` (sample, shape_pc) and ``texture_coeff``;
:func:`sample_codes` reads a row's codes either way.

Crossed designs are drawn and written in blocks of :data:`DRAW_BLOCK` rows, each with
its own seeded generator, sample-major (row ``r`` is person ``r mod identities``), so
a design of any size is built in bounded memory and every block of it holds every
person (of a pool up to that size). A design depends only on the seed and the config,
never on how it is sharded.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri
import xarray as xr

from ..faces.factors import FACTORS, INTRINSIC
from ..faces.version import GENERATOR_VERSION

DESIGNS = ("crossed", "independent", "sweep", "portraits", "morph", "revcorr")
POOLS = ("train", "heldout")
# Designs whose identities may come from the held-out pool. Morph and revcorr sets are read through an
# identity network's logit for each of their identities, which held-out identities do not have.
HELDOUT_DESIGNS = ("crossed", "independent", "sweep", "portraits")
SWEEP_EXPRESSION = "happiness"  # the expression whose intensity a sweep of expression_intensity shows
DRAW_BLOCK = 1 << 16  # rows of a crossed design drawn by one generator, and the sample chunk of every design
ROW_CODES = ("shape_coeff", "texture_coeff")  # per-row identity codes (morph and revcorr designs only)
TABLE_CODES = ("identity_shape", "identity_texture")  # per-person identity codes (every design)


class DesignError(ValueError):
    """A design table is inconsistent (a row's person is not in its identity table)."""


def _set_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, 0x5E7, zlib.crc32(name.encode())])


def _block_rng(seed: int, name: str, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x5E7, zlib.crc32(name.encode()), 0xB10C, block])


def sample_codes(ds: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Identity shape and texture codes of every row of a design (or of a store made from one), (n, k) each.

    A row's own codes (``shape_coeff``, ``texture_coeff``: morph and revcorr designs) where the design has
    them, else its person's codes in the identity table, looked up by the row's ``identity``.
    """
    if all(k in ds.variables for k in ROW_CODES):
        return np.asarray(ds["shape_coeff"].values), np.asarray(ds["texture_coeff"].values)
    rows = person_rows(ds)
    return np.asarray(ds["identity_shape"].values)[rows], np.asarray(ds["identity_texture"].values)[rows]


def with_row_codes(ds: xr.Dataset) -> xr.Dataset:
    """A (loaded) design slice with every row's codes as ``shape_coeff`` and ``texture_coeff`` (a rendered
    set's store has them, as the data contract says; a design table has them only where its rows need them)."""
    if all(k in ds.variables for k in ROW_CODES):
        return ds
    shape, texture = sample_codes(ds)
    return ds.assign(
        shape_coeff=(("sample", "shape_pc"), shape, {"description": "identity shape coefficients of each image's "
                                                                    "person (unit variance per component)"}),
        texture_coeff=(("sample", "texture_pc"), texture, {"description": "identity texture coefficients of each "
                                                                          "image's person (unit variance per component)"}))


def person_rows(ds: xr.Dataset) -> np.ndarray:
    """Row of each sample's person in the identity table (``identity_shape``), checked."""
    missing = [k for k in (*TABLE_CODES, "person", "identity") if k not in ds.variables]
    if missing:
        raise DesignError(f"not a design table of this version: no {', '.join(missing)} (rerun the stimulus stage)")
    return table_rows(np.asarray(ds["person"].values), np.asarray(ds["identity"].values))


def table_rows(person: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """Row of each identity of ``identity`` in an identity table whose rows are the (sorted) ``person``, checked."""
    rows = np.searchsorted(person, identity)
    bad = (rows >= len(person)) | (person[np.minimum(rows, len(person) - 1)] != identity)
    if bad.any():
        raise DesignError(f"identities {sorted(set(identity[bad].tolist()))[:5]} are not in the design's identity "
                          f"table (person {person[:5].tolist()}...)")
    return rows


def draw_factor(name: str, spec: dict[str, Any], rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` values of a factor from its config ``spec``.

    Continuous factors are uniform on [min, max], or normal around ``neutral`` (sd ``sd``)
    truncated to [min, max] by inverse transform: no value piles up at a bound, where ties
    would carry no information about the factor.
    """
    if FACTORS[name].kind == "categorical":
        levels = list(spec["levels"])
        w = np.asarray(spec.get("weights") or [1.0] * len(levels), dtype=float)
        return np.asarray(levels, dtype=object)[rng.choice(len(levels), size=n, p=w / w.sum())]
    lo, hi = float(spec["min"]), float(spec["max"])
    if spec.get("distribution", "uniform") == "normal":
        mu, sd = float(spec["neutral"]), float(spec["sd"])
        u = rng.uniform(ndtr((lo - mu) / sd), ndtr((hi - mu) / sd), size=n)
        return np.clip(mu + sd * ndtri(u), lo, hi)
    return rng.uniform(lo, hi, size=n)


def neutral(name: str, spec: dict[str, Any], n: int) -> np.ndarray:
    """``n`` copies of a factor's neutral value."""
    value = spec["neutral"]
    return np.full(n, value, dtype=object if FACTORS[name].kind == "categorical" else float)


def n_texture(generator: dict[str, Any]) -> int:
    """Number of texture coefficients of a generator config."""
    return int(generator["texture_components"]) * int(generator["texture_bands"])


def pool_range(set_spec: dict[str, Any], stimuli: dict[str, Any]) -> tuple[int, int]:
    """First global identity index and size of the identity pool a set draws from.

    The training pool is identities ``0 .. stimuli.identities-1``; the held-out pool
    (``pool: heldout``) is ``identities .. identities+heldout_identities-1``, disjoint
    from it by construction.
    """
    n_train = int(stimuli["identities"])
    pool = set_spec.get("pool", "train")
    if pool == "train":
        return 0, n_train
    if pool != "heldout":
        raise ValueError(f"pool {pool!r}: use one of {', '.join(POOLS)}")
    if set_spec["design"] not in HELDOUT_DESIGNS:
        raise ValueError(f"a {set_spec['design']} set cannot draw from the held-out pool "
                         f"(designs that can: {', '.join(HELDOUT_DESIGNS)})")
    n_heldout = int(stimuli.get("heldout_identities", 0))
    if n_heldout < 1:
        raise ValueError("pool: heldout needs stimuli.heldout_identities >= 1 (it is 0)")
    return n_train, n_heldout


def identity_pool(seed: int, n: int, stimuli: dict[str, Any], start: int = 0) -> dict[str, np.ndarray]:
    """Codes and intrinsic factors of identities ``start .. start+n-1``.

    Identity ``i`` is a pure function of (seed, i), so the same global index gives the
    same person in every set and the training and held-out pools never share one.
    ``identity`` holds the global indices; the other arrays are in the same order.
    """
    gen, factors = stimuli["generator"], stimuli["factors"]
    k, t = int(gen["shape_components"]), n_texture(gen)
    out: dict[str, list] = {"shape_coeff": [], "texture_coeff": []}
    out.update({name: [] for name in INTRINSIC if name != "identity"})
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, 0x1D, i])
        out["shape_coeff"].append(rng.standard_normal(k))
        out["texture_coeff"].append(rng.standard_normal(t))
        for name in INTRINSIC:
            if name != "identity":
                out[name].append(draw_factor(name, factors[name], rng, 1)[0])
    res = {key: np.asarray(v, dtype=object if key in ("gender", "ethnicity", "hair_style") else float) for key, v in out.items()}
    res["identity"] = np.arange(start, start + n)
    return res


def _table(ids: np.ndarray, pool: dict[str, np.ndarray], vary: list[str], factors: dict, rng: np.random.Generator
           ) -> dict[str, np.ndarray]:
    """Factor columns for samples of pool members ``ids`` (positions in the pool, not global indices):
    varied factors drawn, others neutral or the identity's own; ``identity`` gets the global indices."""
    n = len(ids)
    cols: dict[str, np.ndarray] = {"identity": pool["identity"][ids]}
    for name in FACTORS:
        if name == "identity":
            continue
        if name in vary:
            cols[name] = draw_factor(name, factors[name], rng, n)
        elif name in INTRINSIC:
            cols[name] = pool[name][ids]
        else:
            cols[name] = neutral(name, factors[name], n)
    return cols


def design_size(set_spec: dict[str, Any], stimuli: dict[str, Any]) -> int:
    """Number of samples of a set, computed from the config alone."""
    kind = set_spec["design"]
    if kind not in DESIGNS:
        raise ValueError(f"unknown design kind {kind!r} (known: {', '.join(DESIGNS)})")
    _, n_id = pool_range(set_spec, stimuli)
    if kind == "crossed":
        return n_id * int(set_spec["samples_per_identity"])
    if kind == "independent":
        return int(set_spec["samples"])
    if kind == "sweep":
        per = sum(len(stimuli["factors"][f]["levels"]) if FACTORS[f].kind == "categorical" else int(set_spec.get("steps", 9))
                  for f in sweep_factors(set_spec))
        return int(set_spec.get("identities", 1)) * per
    if kind == "portraits":
        return int(set_spec.get("count", 16))
    if kind == "morph":
        return int(set_spec["pairs"]) * len(set_spec.get("types", ["shape", "texture", "both"])) * len(set_spec["levels"])
    if kind == "revcorr":
        return int(set_spec["identities"]) * int(set_spec["samples_per_identity"])
    raise ValueError(f"unknown design kind {kind!r} (known: {', '.join(DESIGNS)})")


def sweep_factors(set_spec: dict[str, Any]) -> list[str]:
    """The factors a sweep set varies (default: every factor except identity)."""
    return list(set_spec.get("factors") or [f for f in FACTORS if f != "identity"])


def _crossed_block(spec, pool, factors, rng, n_id, lo, hi):
    """Rows ``lo .. hi-1`` of a crossed design: sample-major, row ``r`` is pool member ``r mod n_id``."""
    return _table(np.arange(lo, hi) % n_id, pool, list(spec.get("vary", [])), factors, rng), {}


def _independent(spec, pool, factors, rng, n_id):
    n = int(spec["samples"])
    vary = list(spec.get("vary", []))
    ids = rng.integers(0, n_id, size=n) if "identity" in vary else np.zeros(n, dtype=int)
    return _table(ids, pool, vary, factors, rng), {}


def _sweep(spec, pool, factors, rng, n_id):
    steps = int(spec.get("steps", 9))
    ids, swept, step, values = [], [], [], []
    for i in range(min(int(spec.get("identities", 1)), n_id)):
        for f in sweep_factors(spec):
            fs = factors[f]
            vals = list(fs["levels"]) if FACTORS[f].kind == "categorical" else list(np.linspace(fs["min"], fs["max"], steps))
            for s, v in enumerate(vals):
                ids.append(i)
                swept.append(f)
                step.append(s)
                values.append(v)
    ids_a = np.asarray(ids)
    cols = _table(ids_a, pool, [], factors, rng)
    for j, (f, v) in enumerate(zip(swept, values)):
        cols[f] = cols[f].astype(object) if FACTORS[f].kind == "categorical" else cols[f]
        cols[f][j] = v
        if f == "expression_intensity":
            cols["expression"][j] = SWEEP_EXPRESSION
    extra = {"sweep_factor": np.asarray(swept, dtype=object), "sweep_step": np.asarray(step)}
    return cols, extra


def _portraits(spec, pool, factors, rng, n_id):
    count = int(spec.get("count", 16))
    ids = rng.choice(n_id, size=count, replace=count > n_id)
    return _table(np.sort(ids) if count <= n_id else ids, pool, [], factors, rng), {}


MORPH_MATCHED: tuple[str, ...] = ("gender", "ethnicity", "hair_style")


def morph_partners(pool: dict[str, np.ndarray], a: int) -> np.ndarray:
    """Pool positions an identity ``a`` may be morphed towards: those sharing its categorical
    intrinsic factors (:data:`MORPH_MATCHED`), since a morph moves only the shape and texture
    codes and keeps A's sex, ethnicity, hair style and age; fewer matched factors (the last
    dropped first) where no identity shares them all."""
    others = np.arange(len(pool["identity"])) != a
    for k in range(len(MORPH_MATCHED), -1, -1):
        match = others.copy()
        for name in MORPH_MATCHED[:k]:
            match &= pool[name] == pool[name][a]
        if match.any():
            return np.flatnonzero(match)
    raise ValueError("a morph design needs at least 2 identities (stimuli.identities)")


def _morph(spec, pool, factors, rng, n_id):
    if n_id < 2:
        raise ValueError("a morph design needs at least 2 identities (stimuli.identities)")
    types = list(spec.get("types", ["shape", "texture", "both"]))
    levels = [float(x) for x in spec["levels"]]
    src, dst, kinds, lev = [], [], [], []
    for _ in range(int(spec["pairs"])):
        a = int(rng.integers(n_id))
        b = int(rng.choice(morph_partners(pool, a)))
        for t in types:
            for level in levels:
                src.append(a)
                dst.append(b)
                kinds.append(t)
                lev.append(level)
    src_a, dst_a, lev_a = np.asarray(src), np.asarray(dst), np.asarray(lev)
    cols = _table(src_a, pool, [], factors, rng)
    cols.update(shape_coeff=pool["shape_coeff"][src_a], texture_coeff=pool["texture_coeff"][src_a])
    kinds_a = np.asarray(kinds, dtype=object)
    for code, morphed in (("shape_coeff", ("shape", "both")), ("texture_coeff", ("texture", "both"))):
        a, b = pool[code][src_a], pool[code][dst_a]
        moving = np.isin(kinds_a, morphed)[:, None]
        cols[code] = np.where(moving, a + lev_a[:, None] * (b - a), a)
    extra = {"morph_target": pool["identity"][dst_a], "morph_type": kinds_a, "morph_level": lev_a}
    return cols, extra


def _revcorr(spec, pool, factors, rng, n_id):
    n_base = min(int(spec["identities"]), n_id)
    ids = np.repeat(np.arange(n_base), int(spec["samples_per_identity"]))
    cols = _table(ids, pool, [], factors, rng)
    sigma = float(spec.get("sigma", 0.5))
    shape, texture = pool["shape_coeff"][ids], pool["texture_coeff"][ids]
    cols["shape_coeff"] = shape + sigma * rng.standard_normal(shape.shape)
    cols["texture_coeff"] = texture + sigma * rng.standard_normal(texture.shape)
    return cols, {}


_BUILDERS = {"independent": _independent, "sweep": _sweep, "portraits": _portraits,
             "morph": _morph, "revcorr": _revcorr}


def factor_attrs(factors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Kind, unit, description and levels or range of every factor, for store attrs."""
    out = {}
    for name, f in FACTORS.items():
        entry: dict[str, Any] = {"kind": f.kind, "unit": f.unit, "description": f.description}
        if name in factors:
            spec = factors[name]
            if f.kind == "categorical":
                entry["levels"] = list(spec["levels"])
            else:
                entry["range"] = [float(spec["min"]), float(spec["max"])]
        out[name] = entry
    return out


def _attrs(name: str, spec: dict[str, Any], start: int, n_id: int) -> dict[str, Any]:
    set_spec = spec["set"]
    attrs = dict(
        set=name,
        design=set_spec["design"],
        seed=int(spec["seed"]),
        identities=int(spec["identities"]),  # the training pool (an identity network's classes)
        pool=set_spec.get("pool", "train"),
        pool_first=start,
        pool_size=n_id,
        generator_version=GENERATOR_VERSION,
        generator=json.dumps(spec["generator"], sort_keys=True),
        set_config=json.dumps(set_spec, sort_keys=True),
        factors=json.dumps(factor_attrs(spec["factors"]), sort_keys=True),
    )
    if set_spec["design"] == "revcorr":
        attrs["perturbation_sigma"] = float(set_spec.get("sigma", 0.5))
    return attrs


def _rows(cols: dict[str, np.ndarray], extra: dict[str, np.ndarray], lo: int, generator: dict[str, Any]
          ) -> xr.Dataset:
    """Rows ``lo ..`` of a design as a Dataset along ``sample``: factor coordinates (continuous float32),
    design extras, and the rows' own codes where the design has them."""
    n = len(cols["identity"])
    coords: dict[str, Any] = {"sample": np.arange(lo, lo + n)}
    for f in FACTORS:
        kind = FACTORS[f].kind
        if f == "identity":
            arr = np.asarray(cols[f]).astype(np.int64)
        elif kind == "categorical":
            arr = np.asarray(cols[f], dtype=object).astype(str).astype(object)
        else:
            arr = np.asarray(cols[f], dtype=np.float64).astype(np.float32)
        coords[f] = xr.Variable("sample", arr, attrs={"kind": kind, "unit": FACTORS[f].unit,
                                                      "description": FACTORS[f].description})
    for k, v in extra.items():
        coords[k] = ("sample", v)
    data = {}
    if "shape_coeff" in cols:
        k_shape, k_tex = int(generator["shape_components"]), n_texture(generator)
        data = {"shape_coeff": (("sample", "shape_pc"), np.asarray(cols["shape_coeff"], np.float64).reshape(n, k_shape),
                                {"description": "this row's identity shape coefficients (unit variance per component)"}),
                "texture_coeff": (("sample", "texture_pc"),
                                  np.asarray(cols["texture_coeff"], np.float64).reshape(n, k_tex),
                                  {"description": "this row's identity texture coefficients (unit variance per component)"})}
    return xr.Dataset(data, coords=coords)


def _identity_table(pool: dict[str, np.ndarray], members: np.ndarray, generator: dict[str, Any]) -> xr.Dataset:
    """The identity codes of pool members ``members`` (positions), once per person, with the code coordinates."""
    t_per, bands = int(generator["texture_components"]), int(generator["texture_bands"])
    ds = xr.Dataset(
        {"identity_shape": (("person", "shape_pc"), np.asarray(pool["shape_coeff"][members], dtype=np.float64),
                            {"description": "identity shape coefficients of each person (unit variance per component)"}),
         "identity_texture": (("person", "texture_pc"), np.asarray(pool["texture_coeff"][members], dtype=np.float64),
                              {"description": "identity texture coefficients of each person (unit variance per "
                                              "component)"})},
        coords={"person": ("person", pool["identity"][members].astype(np.int64),
                           {"description": "global identity index of each row of the identity table"}),
                "shape_pc": np.arange(int(generator["shape_components"])),
                "texture_pc": np.arange(t_per * bands),
                "texture_band": ("texture_pc", np.repeat(np.arange(bands), t_per))})
    return ds


def _stimuli(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``stimuli`` config keys a design's stage ``spec`` carries (for :func:`pool_range`, :func:`design_size`)."""
    return {"identities": spec["identities"], "heldout_identities": spec.get("heldout_identities", 0),
            "generator": spec["generator"], "factors": spec["factors"]}


def design_blocks(name: str, spec: dict[str, Any], block: int = DRAW_BLOCK) -> Iterator[xr.Dataset]:
    """The design of stimulus set ``name`` as consecutive blocks of rows; the first also holds the identity
    table and the attrs.

    ``spec`` holds ``seed``, ``identities``, ``generator``, ``factors`` and ``set`` (the set's config), and
    ``heldout_identities`` for a set with ``pool: heldout``; see ``workflow/rules/common.smk``. The identities
    come from the set's pool (:func:`pool_range`); attrs ``pool``, ``pool_first`` and ``pool_size`` record it.
    A crossed design yields blocks of ``block`` rows, each drawn by its own generator (so ``block`` is part of
    the design: the pipeline always uses :data:`DRAW_BLOCK`); the other designs, small by construction, yield
    one block.
    """
    set_spec, stimuli = spec["set"], _stimuli(spec)
    start, n_id = pool_range(set_spec, stimuli)
    pool = identity_pool(int(spec["seed"]), n_id, stimuli, start=start)
    gen, factors, seed = spec["generator"], spec["factors"], int(spec["seed"])
    n = design_size(set_spec, stimuli)
    if set_spec["design"] == "crossed":
        for b, lo in enumerate(range(0, n, block)):
            hi = min(n, lo + block)
            cols, extra = _crossed_block(set_spec, pool, factors, _block_rng(seed, name, b), n_id, lo, hi)
            rows = _rows(cols, extra, lo, gen)
            if b == 0:
                rows = xr.merge([rows, _identity_table(pool, np.arange(n_id), gen)]).assign_attrs(
                    _attrs(name, spec, start, n_id))
            yield rows
        return
    cols, extra = _BUILDERS[set_spec["design"]](set_spec, pool, factors, _set_rng(seed, name), n_id)
    assert len(cols["identity"]) == n, "design size disagrees with design_size()"
    members = np.unique(np.asarray(cols["identity"]) - start)
    yield xr.merge([_rows(cols, extra, 0, gen), _identity_table(pool, members, gen)]).assign_attrs(
        _attrs(name, spec, start, n_id))


def build_design(name: str, spec: dict[str, Any], block: int = DRAW_BLOCK) -> xr.Dataset:
    """The whole design of stimulus set ``name`` in memory (:func:`design_blocks`, concatenated)."""
    blocks = list(design_blocks(name, spec, block))
    if len(blocks) == 1:
        return blocks[0]
    rows = xr.concat([b.drop_vars([*TABLE_CODES, "person", "texture_band", "shape_pc", "texture_pc"], errors="ignore")
                      for b in blocks], dim="sample", data_vars="minimal", coords="minimal", compat="override",
                     join="override", combine_attrs="override")
    return xr.merge([rows, blocks[0][[*TABLE_CODES]]]).assign_attrs(blocks[0].attrs)


def write_design(name: str, spec: dict[str, Any], out: str | Path, block: int = DRAW_BLOCK) -> Path:
    """Build set ``name``'s design from its stage ``spec`` and write it to the store ``out``: block by block
    (memory holds one block of :data:`DRAW_BLOCK` rows, whatever the size), atomically, in sample chunks of
    ``block`` rows."""
    import logging

    from ..store import atomic_store, consolidate, write_zarr

    log = logging.getLogger(__name__)
    n = design_size(spec["set"], _stimuli(spec))
    with atomic_store(out) as tmp:
        for b, rows in enumerate(design_blocks(name, spec, block)):
            if b == 0:
                attrs = rows.attrs
                encoding = {k: {"chunks": (block,) + v.shape[1:]} for k, v in rows.variables.items()
                            if v.dims[:1] == ("sample",)}
                write_zarr(rows, tmp, mode="w", consolidated=False, encoding=encoding)
            else:  # (an append replaces the store's attrs with the block's)
                write_zarr(rows.assign_attrs(attrs), tmp, append_dim="sample", consolidated=False)
            if b % 64 == 63:
                log.info("design %s: %d of %d rows written", name, rows["sample"].values[-1] + 1, n)
        consolidate(tmp)
    log.info("design %s: %d samples (%s)", name, n, spec["set"]["design"])
    return Path(out)
