"""Designs and stores: seeded tables, bit-identical shards, unfinished stores refused."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from infodissect.config import validate_config
from infodissect.stimuli.design import build_design, design_size, sample_codes, write_design as stage_write_design
from infodissect.stimuli.store import gather_shards, open_stimuli, render_shard
from infodissect.store import StoreError, atomic_store, write_zarr

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    return validate_config(yaml.safe_load((ROOT / "config" / "test.yaml").read_text()))


def stage_spec(config: dict, name: str, seed: int | None = None) -> dict:
    st = config["stimuli"]
    return {"seed": config["seed"] if seed is None else seed, "identities": st["identities"],
            "heldout_identities": st["heldout_identities"], "generator": st["generator"], "factors": st["factors"],
            "set": st["sets"][name], "name": name}


def write_design(config: dict, name: str, path: Path, seed: int | None = None) -> Path:
    with atomic_store(path) as tmp:
        write_zarr(build_design(name, stage_spec(config, name, seed)), tmp)
    return path


def test_every_set_matches_its_planned_size(config):
    for name, spec in config["stimuli"]["sets"].items():
        ds = build_design(name, stage_spec(config, name))
        assert ds.sizes["sample"] == design_size(spec, config["stimuli"]) > 0
        assert {"identity", "yaw", "expression", "light_azimuth", "identity_shape", "identity_texture"} <= set(ds.variables)
        # Normalised: each person's codes once; a row has codes of its own only where the design needs them.
        assert ("shape_coeff" in ds) == (spec["design"] in ("morph", "revcorr")), name
        assert np.array_equal(ds.person.values, np.unique(ds.identity.values)) or spec["design"] == "crossed"
        assert ds.yaw.dtype == np.float32 and sample_codes(ds)[0].shape == (ds.sizes["sample"], ds.sizes["shape_pc"])


def test_test_set_has_train_identities_with_fresh_nuisance(config):
    train, test = (build_design(n, stage_spec(config, n)) for n in ("train", "test"))
    assert set(train.identity.values) == set(test.identity.values)
    for i in set(train.identity.values.tolist()):
        a = sample_codes(train)[0][train.identity.values == i]
        b = sample_codes(test)[0][test.identity.values == i]
        assert np.array_equal(a[0], b[0])
    assert not np.isin(test.yaw.values, train.yaw.values).any()


def test_sweep_varies_one_factor_at_a_time(config):
    ds = build_design("sweeps", stage_spec(config, "sweeps"))
    factors = [str(v) for v in ds.sweep_factor.values.tolist()]
    for f in ("yaw", "light_azimuth", "age"):
        rows = np.flatnonzero(np.asarray(factors) == f)
        assert len(np.unique(ds[f].values[rows])) == len(rows) > 1
        others = ds.yaw.values[rows] if f != "yaw" else ds.pitch.values[rows]
        assert len(np.unique(others)) == 1


def test_morphs_interpolate_and_amplify(config):
    ds = build_design("morphs", stage_spec(config, "morphs"))
    shape_only = ds.isel(sample=np.flatnonzero([str(t) == "shape" for t in ds.morph_type.values.tolist()]))
    lv = shape_only.morph_level.values
    assert lv.max() > 1.0
    texture = shape_only.texture_coeff.values
    assert np.allclose(texture, texture[0:1]) or len({int(i) for i in shape_only.identity.values}) > 1
    base = shape_only.isel(sample=np.flatnonzero(lv == 0.0)[0])
    target = shape_only.isel(sample=np.flatnonzero(lv == 1.0)[0])
    assert not np.allclose(base.shape_coeff.values, target.shape_coeff.values)


def test_morph_partners_share_sex_ethnicity_and_hair_style():
    from infodissect.stimuli.design import identity_pool, morph_partners

    demo = validate_config({})
    ds = build_design("morphs", stage_spec(demo, "morphs"))
    pool = identity_pool(demo["seed"], demo["stimuli"]["identities"], demo["stimuli"])
    for name in ("gender", "ethnicity", "hair_style"):
        target = pool[name][ds["morph_target"].values.astype(int)]
        assert np.array_equal(target, ds[name].values.astype(object)), name
    assert (ds["morph_target"].values != ds["identity"].values).all()
    # Without a full match, the closest: here only identity 1 is female.
    tiny = {"identity": np.arange(3), "gender": np.array(["male", "female", "male"], dtype=object),
            "ethnicity": np.array(["A", "B", "C"], dtype=object), "hair_style": np.array(["short"] * 3, dtype=object)}
    assert list(morph_partners(tiny, 0)) == [2] and list(morph_partners(tiny, 1)) == [0, 2]


def test_same_seed_same_bits_whatever_the_sharding(config, tmp_path):
    spec_render = {"generator": config["stimuli"]["generator"], "render": dict(config["stimuli"]["render"])}
    design = write_design(config, "analysis", tmp_path / "analysis.design.zarr")
    n = open_stimuli(design).sizes["sample"]
    one = copy.deepcopy(spec_render)
    one["render"]["shard_size"] = n + (-n % one["render"]["batch_size"])
    render_shard(design, 0, one, tmp_path / "one" / "0.zarr")
    gather_shards(design, [tmp_path / "one" / "0.zarr"], tmp_path / "one.zarr")
    several = copy.deepcopy(spec_render)
    several["render"]["shard_size"] = several["render"]["batch_size"]
    shards = []
    for i in range(-(-n // several["render"]["shard_size"])):
        shards.append(tmp_path / "many" / f"{i}.zarr")
        render_shard(design, i, several, shards[-1])
    assert len(shards) > 1
    gather_shards(design, shards, tmp_path / "many.zarr")
    a, b = open_stimuli(tmp_path / "one.zarr"), open_stimuli(tmp_path / "many.zarr")
    assert np.array_equal(a.image.values, b.image.values)
    assert np.array_equal(a.parts.values, b.parts.values)
    assert a.image.dims == ("sample", "y", "x", "channel") and a.image.dtype == np.uint8
    assert a.attrs["generator_version"] and "factors" in a.attrs
    # The identity codes of the design reach the set store, whatever the sharding.
    codes = open_stimuli(design)
    for store in (a, b):
        for name in ("identity_shape", "identity_texture", "person"):
            assert np.array_equal(store[name].values, codes[name].values), name
            assert "sample" not in store[name].dims
        # The set's store also has every image's codes along sample (the data contract of a rendered set).
        assert store["shape_coeff"].dims == ("sample", "shape_pc")
        assert all(np.array_equal(x, y) for x, y in zip(sample_codes(store), sample_codes(codes)))
    # A different seed gives different stimuli.
    other = write_design(config, "analysis", tmp_path / "other.design.zarr", seed=config["seed"] + 1)
    render_shard(other, 0, one, tmp_path / "other.zarr")
    assert not np.array_equal(open_stimuli(tmp_path / "other.zarr").image.values, a.image.values)


def test_unfinished_or_foreign_stores_are_refused(config, tmp_path):
    (tmp_path / "x.zarr.partial").mkdir()
    with pytest.raises(StoreError, match="unfinished"):
        open_stimuli(tmp_path / "x.zarr")
    design = build_design("portraits", stage_spec(config, "portraits"))
    design.attrs["generator_version"] = "0.0"
    with atomic_store(tmp_path / "old.zarr") as tmp:
        write_zarr(design, tmp)
    with pytest.raises(StoreError, match="generator version"):
        open_stimuli(tmp_path / "old.zarr")


def test_a_failed_write_leaves_no_store(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_store(tmp_path / "s.zarr") as tmp:
            tmp.mkdir()
            raise RuntimeError("killed")
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.partial").exists()


def _with_heldout_set(config: dict, design: str = "crossed", **keys) -> dict:
    """The test config plus a set `heldout` of the held-out pool (crossed over it by default)."""
    config = copy.deepcopy(config)
    spec = {"design": design, "pool": "heldout", **keys}
    if design == "crossed":
        spec.setdefault("samples_per_identity", 3)
        spec.setdefault("vary", ["expression", "yaw"])
    config["stimuli"]["sets"]["heldout"] = spec
    return validate_config(config)


def test_heldout_identities_are_disjoint_from_training_and_a_pure_function_of_their_index(config):
    from infodissect.stimuli.design import identity_pool

    cfg = _with_heldout_set(config)
    st = cfg["stimuli"]
    n_train, n_held = st["identities"], st["heldout_identities"]
    held = build_design("heldout", stage_spec(cfg, "heldout"))
    train = build_design("train", stage_spec(cfg, "train"))
    assert sorted(set(held.identity.values.tolist())) == list(range(n_train, n_train + n_held))
    assert not set(held.identity.values.tolist()) & set(train.identity.values.tolist())
    assert (held.attrs["pool"], held.attrs["pool_first"], held.attrs["pool_size"]) == ("heldout", n_train, n_held)
    assert train.attrs["pool"] == "train" and held.attrs["identities"] == n_train  # an identity network's classes
    # No held-out face is a training face: the codes differ too.
    assert not np.isin(sample_codes(held)[0][:, 0], sample_codes(train)[0][:, 0]).any()
    # Identity i is the same person however the pool is cut: alone, or in a larger held-out pool.
    for i in (n_train, n_train + n_held - 1):
        alone = identity_pool(cfg["seed"], 1, st, start=i)
        row = int(np.flatnonzero(held.identity.values == i)[0])
        assert np.array_equal(alone["shape_coeff"][0], sample_codes(held)[0][row])
        assert np.array_equal(alone["texture_coeff"][0], sample_codes(held)[1][row])
        assert alone["gender"][0] == held.gender.values[row] and alone["identity"][0] == i
    bigger = copy.deepcopy(cfg)
    bigger["stimuli"]["heldout_identities"] = n_held + 3
    more = build_design("heldout", stage_spec(bigger, "heldout"))
    for i in range(n_train, n_train + n_held):
        a = sample_codes(held)[0][held.identity.values == i][0]
        b = sample_codes(more)[0][more.identity.values == i][0]
        assert np.array_equal(a, b)
    # Built twice: the same bits; and the training sets do not depend on the held-out pool at all.
    again = build_design("heldout", stage_spec(cfg, "heldout"))
    for name in ("identity_shape", "identity_texture", "identity", "yaw", "expression"):
        assert np.array_equal(held[name].values, again[name].values), name
    assert np.array_equal(sample_codes(build_design("train", stage_spec(bigger, "train")))[1], sample_codes(train)[1])


@pytest.mark.parametrize(("design", "keys"), [
    ("crossed", {"samples_per_identity": 5, "vary": ["yaw"]}),
    ("independent", {"samples": 7, "vary": ["identity", "yaw"]}),
    ("independent", {"samples": 3, "vary": ["yaw"]}),
    ("portraits", {"count": 5}),
    ("sweep", {"identities": 2, "steps": 3, "factors": ["yaw", "expression"]}),
])
def test_heldout_sets_match_their_planned_size_and_draw_only_heldout_identities(config, design, keys):
    cfg = _with_heldout_set(config, design, **keys)
    st = cfg["stimuli"]
    ds = build_design("heldout", stage_spec(cfg, "heldout"))
    assert ds.sizes["sample"] == design_size(st["sets"]["heldout"], st) > 0
    ids = set(ds.identity.values.tolist())
    assert ids <= set(range(st["identities"], st["identities"] + st["heldout_identities"]))


def test_designs_refuse_the_heldout_pool_where_it_makes_no_sense(config):
    from infodissect.stimuli.design import pool_range

    st = dict(config["stimuli"], heldout_identities=2)
    with pytest.raises(ValueError, match="morph set cannot draw from the held-out pool"):
        pool_range({"design": "morph", "pool": "heldout"}, st)
    with pytest.raises(ValueError, match="stimuli.heldout_identities >= 1"):
        pool_range({"design": "crossed", "pool": "heldout"}, dict(st, heldout_identities=0))
    assert pool_range({"design": "crossed"}, st) == (0, st["identities"])


def test_a_heldout_set_renders_the_same_bits_whatever_the_sharding(config, tmp_path):
    cfg = _with_heldout_set(config, samples_per_identity=8, vary=["expression", "yaw"])
    path = tmp_path / "heldout.design.zarr"
    with atomic_store(path) as tmp:
        write_zarr(build_design("heldout", stage_spec(cfg, "heldout")), tmp)
    render = {"generator": cfg["stimuli"]["generator"], "render": dict(cfg["stimuli"]["render"], batch_size=8)}
    render_shard(path, 0, {**render, "render": dict(render["render"], shard_size=16)}, tmp_path / "one" / "0.zarr")
    gather_shards(path, [tmp_path / "one" / "0.zarr"], tmp_path / "one.zarr")
    shards = [tmp_path / "two" / f"{i}.zarr" for i in range(2)]
    for i, shard in enumerate(shards):
        render_shard(path, i, {**render, "render": dict(render["render"], shard_size=8)}, shard)
    gather_shards(path, shards, tmp_path / "two.zarr")
    a, b = open_stimuli(tmp_path / "one.zarr"), open_stimuli(tmp_path / "two.zarr")
    assert np.array_equal(a.image.values, b.image.values) and a.attrs["pool"] == b.attrs["pool"] == "heldout"
    assert a.sizes["sample"] == 16 and a.image.values.std() > 10


def test_a_crossed_design_is_written_block_by_block_as_built_in_memory(config, tmp_path):
    """Issue 18: a crossed design is drawn in blocks (each its own generator) and written one block at a time,
    sample-major, so any size is built in bounded memory; the rows of a block do not depend on the design's
    length, and every block covers the whole pool."""
    cfg = copy.deepcopy(config)
    cfg["stimuli"]["sets"]["train"].update(samples_per_identity=5)
    spec = stage_spec(cfg, "train")
    n_id = cfg["stimuli"]["identities"]
    out = stage_write_design("train", spec, tmp_path / "train.zarr", block=6)
    stored, built = open_stimuli(out), build_design("train", spec, block=6)
    assert stored.sizes["sample"] == built.sizes["sample"] == 5 * n_id
    assert stored["yaw"].encoding["chunks"] == (6,) and stored["identity_shape"].sizes["person"] == n_id
    for name in ("identity", "yaw", "expression", "identity_shape", "person"):
        assert np.array_equal(stored[name].values, built[name].values), name
    assert np.array_equal(stored.identity.values, np.arange(5 * n_id) % n_id)  # sample-major
    assert len(np.unique(stored.yaw.values)) == 5 * n_id  # no two blocks drew the same values
    longer = copy.deepcopy(cfg)
    longer["stimuli"]["sets"]["train"].update(samples_per_identity=9)
    more = build_design("train", stage_spec(longer, "train"), block=6)
    assert np.array_equal(more.yaw.values[:18], built.yaw.values[:18])  # whole blocks: the same rows
    # In one block (the pipeline's block of 65,536 rows) the same rows come from other draws.
    assert not np.array_equal(build_design("train", spec).yaw.values, built.yaw.values)
