"""The MI stage and the analyses on planted data: the factors a synthetic layer encodes are exactly those found."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

from infodissect.analyses.generalisation import MorphError, morph_responses, sign_flip_pvalue, summarise
from infodissect.analyses.information import (InformationError, activation_information, factor_table, load_layers,
                                              variable_chunks)
from infodissect.analyses.profile import layer_profile, peak_layer, unit_order
from infodissect.report import build_report, caption_text
from infodissect.stages import run_stage
from infodissect.store import StoreError, atomic_store, open_tree

N = 800
IDS = 5


def _planted_store(path, seed=0):
    """An activation store whose units are known functions of known factors, plus noise.

    block1_out (unit 4, y 3, x 3): unit 0 at position (0, 0) follows yaw; unit 1 follows identity at every
    position; units 2 and 3 are noise (ReLU-like, half zeros). pool (unit 3): unit 0 follows light_azimuth.
    scale and expression vary but nothing encodes them.
    """
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-45, 45, N)
    light = rng.uniform(-60, 60, N)
    scale = rng.uniform(0.85, 1.15, N)
    identity = rng.integers(0, IDS, N)
    expression = np.asarray(["neutral", "happiness", "fear"], dtype=object)[rng.integers(0, 3, N)]
    id_means = rng.normal(0, 3, IDS)
    conv = rng.normal(0, 1, (N, 4, 3, 3))
    conv[:, 0, 0, 0] += yaw / 15
    conv[:, 1] += id_means[identity][:, None, None]
    conv[:, 2:] = np.maximum(conv[:, 2:], 0)
    vec = rng.normal(0, 1, (N, 3))
    vec[:, 0] += light / 20
    coords = {"yaw": ("sample", yaw), "light_azimuth": ("sample", light), "scale": ("sample", scale),
              "identity": ("sample", identity), "expression": ("sample", expression)}
    attrs = {"model": "planted_s0", "set": "analysis", "task": "identity", "classes": json.dumps([str(i) for i in
                                                                                               range(IDS)])}
    tree = xr.DataTree.from_dict({
        "/": xr.Dataset(coords={"sample": np.arange(N)}, attrs=attrs),
        "block1_out": xr.Dataset({"activation": (("sample", "unit", "y", "x"), conv.astype(np.float16))},
                                 coords=coords),
        "pool": xr.Dataset({"activation": (("sample", "unit"), vec.astype(np.float16))}, coords=coords),
    })
    with atomic_store(path) as tmp:
        tree.to_zarr(tmp, zarr_format=3, consolidated=True)
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    act = _planted_store(root / "act.zarr")
    out = activation_information(act, root / "mi.zarr", n_perm=100, alpha=0.01, seed=0, chunk_mb=0.02)
    return root, act, out


def test_planted_layer_significance_names_exactly_the_encoded_factors(planted):
    _, _, out = planted
    tree = open_tree(out)
    conv = tree["block1_out"].to_dataset()
    assert conv["mi"].dims == ("factor", "unit", "y", "x") and conv["mi"].attrs["units"] == "bits"
    sig = conv["significant"]
    found = {(str(sig["factor"].values[f]), int(u), int(y), int(x)) for f, u, y, x in np.argwhere(sig.values)}
    expected = {("yaw", 0, 0, 0)} | {("identity", 1, y, x) for y in range(3) for x in range(3)}
    assert found == expected
    # Spatially pooled: unit 1 (identity) and, averaged over 9 positions, still unit 0 (yaw).
    pooled = conv["significant_pooled"]
    assert {(str(pooled["factor"].values[f]), int(u)) for f, u in np.argwhere(pooled.values)} == {
        ("identity", 1), ("yaw", 0)}
    vec = tree["pool"].to_dataset()
    assert vec["mi"].dims == ("factor", "unit")
    hits = np.argwhere(vec["significant"].values)
    assert [(str(vec["factor"].values[f]), int(u)) for f, u in hits] == [("light_azimuth", 0)]
    assert conv.attrs["n_perm"] == 100 and conv.attrs["biascorrect"] == 1 and conv.attrs["layer"] == "block1_out"
    assert set(map(str, conv["factor"].values)) == {"identity", "expression", "yaw", "light_azimuth", "scale"}
    assert dict(zip(map(str, conv["factor"].values), map(str, conv["factor_kind"].values)))["identity"] \
        == "categorical"


def test_planted_profile_and_maps_name_the_factors(planted, tmp_path):
    _, _, out = planted
    layers = load_layers(out)
    prof = layer_profile(layers)
    assert list(prof["layer"].values) == ["block1_out", "pool"]
    best = prof["max_mi"].idxmax("factor")
    assert str(best.sel(layer="pool").values) == "light_azimuth"
    assert str(best.sel(layer="block1_out").values) == "identity"
    assert peak_layer(prof, "light_azimuth") == "pool" and peak_layer(prof, "identity") == "block1_out"
    share = prof["share_significant"].sel(layer="block1_out")
    assert float(share.sel(factor="identity")) == 0.25 and float(share.sel(factor="scale")) == 0.0
    # The yaw map of block1_out peaks at the planted position.
    yaw_map = layers["block1_out"]["mi"].sel(factor="yaw").max("unit")
    assert np.unravel_index(int(np.argmax(yaw_map.values)), yaw_map.shape) == (0, 0)
    # Units ordered by their best factor: the identity unit and the yaw unit are grouped apart.
    order = unit_order(layers["block1_out"]["mi_pooled"])
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    figs = {f"{k}_figure": tmp_path / f"{k}.png" for k in ("profile", "units", "maps")}
    numbers = run_stage("profile", {}, {"mi": out}, {"out": tmp_path / "profile.zarr", **figs}, title="planted")
    assert numbers["identity information peaks at (mean over units)"].startswith("block1_out")
    assert all(p.stat().st_size > 10_000 for p in figs.values())
    again = xr.open_zarr(tmp_path / "profile.zarr")
    assert again["max_mi"].dims == ("layer", "factor") and again["max_mi"].attrs["units"] == "bits"


def test_mi_store_errors_name_the_problem(planted, tmp_path):
    root, act, _ = planted
    with pytest.raises(StoreError, match="no such activation store"):
        activation_information(tmp_path / "missing.zarr", tmp_path / "o.zarr", n_perm=10)
    (tmp_path / "half.zarr.partial").mkdir()
    with pytest.raises(StoreError, match="unfinished .partial"):
        activation_information(tmp_path / "half.zarr", tmp_path / "o.zarr", n_perm=10)
    with pytest.raises(InformationError, match=r"layer\(s\) \['logits'\] were not extracted"):
        activation_information(act, tmp_path / "o.zarr", layers=["logits"], n_perm=10)
    with pytest.raises(InformationError, match=r"factor\(s\) \['age'\] are not coordinates"):
        activation_information(act, tmp_path / "o.zarr", factors=["age"], n_perm=10)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a finished store"):
        open_tree(tmp_path / "junk.zarr")


def _graded_store(path, n=1200, seed=1):
    """A layer whose unit 0 follows gender_strength in opposite directions for women and men (unit 1: noise)."""
    rng = np.random.default_rng(seed)
    gender = np.asarray(["female", "male"], dtype=object)[rng.integers(0, 2, n)]
    strength = rng.uniform(0, 1, n)
    sign = np.where(gender == "male", 1.0, -1.0)
    act = rng.normal(0, 1, (n, 2))
    act[:, 0] += 3 * sign * strength
    coords = {"gender": ("sample", gender), "gender_strength": ("sample", strength),
              "age": ("sample", rng.uniform(20, 70, n))}
    tree = xr.DataTree.from_dict({
        "/": xr.Dataset(coords={"sample": np.arange(n)}, attrs={"model": "graded_s0", "set": "analysis"}),
        "pool": xr.Dataset({"activation": (("sample", "unit"), act.astype(np.float32))}, coords=coords)})
    with atomic_store(path) as tmp:
        tree.to_zarr(tmp, zarr_format=3, consolidated=True)
    return path, act, coords


def test_a_graded_factor_is_measured_given_its_parent(tmp_path):
    from infodissect.info import mutual_information

    act, x, coords = _graded_store(tmp_path / "act.zarr")
    given = {"gender_strength": "gender", "expression_intensity": "expression"}  # the second: not in the set
    kw = dict(n_perm=50, alpha=0.05, seed=0)
    cond = open_tree(activation_information(act, tmp_path / "cond.zarr", given=given, **kw))["pool"].to_dataset()
    marg = open_tree(activation_information(act, tmp_path / "marg.zarr", **kw))["pool"].to_dataset()
    assert dict(zip(map(str, cond["factor"].values), map(str, cond["given"].values))) == {
        "gender": "", "gender_strength": "gender", "age": ""}
    assert set(map(str, marg["given"].values)) == {""}
    # Marginally the two directions cancel; given the gender the unit is about strength, and significant.
    assert float(marg["mi"].sel(factor="gender_strength", unit=0)) < 0.02
    assert not bool(marg["significant"].sel(factor="gender_strength", unit=0))
    assert float(cond["mi"].sel(factor="gender_strength", unit=0)) > 0.3  # r^2 = 0.43 within each gender: 0.40 bits
    assert bool(cond["significant"].sel(factor="gender_strength", unit=0))
    assert not bool(cond["significant"].sel(factor="gender_strength", unit=1))
    assert cond["null_max"].sizes["permutation"] == 50
    # The same numbers as the engine's conditional MI; the other factors are untouched.
    xa = xr.DataArray(x.astype(np.float32), dims=("sample", "unit"))
    ref = mutual_information(xa, xr.Dataset({"gender_strength": ("sample", coords["gender_strength"][1])}),
                             cond=xr.DataArray(coords["gender"][1], dims="sample"))
    np.testing.assert_allclose(cond["mi"].sel(factor="gender_strength").values,
                               np.asarray(ref).ravel(), rtol=1e-5)
    for f in ("gender", "age"):
        np.testing.assert_array_equal(cond["mi"].sel(factor=f).values, marg["mi"].sel(factor=f).values)
    # Pixels measured given the parent beside layers measured marginally: the profile leaves the pixels' value out.
    pix = tmp_path / "pix.zarr"
    with atomic_store(pix) as tmp:
        xr.DataTree.from_dict({"/": xr.Dataset(), "pixels": cond.load()}).to_zarr(tmp, zarr_format=3,
                                                                                  consolidated=True)
    both = load_layers(tmp_path / "marg.zarr", pix)
    assert np.isnan(both["pixels"]["mi"].sel(factor="gender_strength").values).all()
    assert np.isfinite(both["pixels"]["mi"].sel(factor="gender").values).all()
    assert list(map(str, both["pixels"]["given"].values)) == ["", "", ""]
    same = load_layers(tmp_path / "cond.zarr", pix)  # measured alike: kept
    assert np.isfinite(same["pixels"]["mi"].values).all()
    # Measuring only the graded factor still conditions on its parent (read from the set).
    only = open_tree(activation_information(act, tmp_path / "only.zarr", factors=["gender_strength"], given=given,
                                            **kw))["pool"].to_dataset()
    np.testing.assert_array_equal(only["mi"].values[0], cond["mi"].sel(factor="gender_strength").values)
    for bad, match in [({"gender_strength": "age"}, r"mi.given.gender_strength: 'age' is not a categorical"),
                       ({"strength": "gender"}, r"mi.given.strength: 'strength' is not a generative factor"),
                       ({"gender": "gender"}, r"mi.given.gender: 'gender' is not a categorical factor other than")]:
        with pytest.raises(InformationError, match=match):
            activation_information(act, tmp_path / "bad.zarr", given=bad, **kw)
    assert not (tmp_path / "bad.zarr").exists()


def test_factor_table_drops_constant_factors_and_chunks_fit_the_budget():
    ds = xr.Dataset(coords={"sample": np.arange(4), "yaw": ("sample", [0.0, 1, 2, 3]), "pitch": ("sample", [0.0] * 4),
                            "identity": ("sample", [0, 1, 0, 1]), "other": ("sample", [1, 2, 3, 4])})
    table = factor_table(ds)
    assert list(table.data_vars) == ["identity", "yaw"] and table["identity"].attrs["kind"] == "categorical"
    with pytest.raises(InformationError, match="no generative factor varies"):
        factor_table(ds[["pitch"]].drop_vars(["yaw", "identity"]))
    x = xr.DataArray(np.zeros((1000, 8, 5, 5)), dims=("sample", "unit", "y", "x"))
    chunks = variable_chunks(x, "sample", chunk_mb=0.5)  # 65 variables of 1000 float64 samples
    assert chunks == {"sample": -1, "x": 5, "y": 5, "unit": 2}


def _morph_logits(texture_weight=1.0, shape_weight=0.0, pairs=6, seed=0):
    """Logits of a network that reads identity from texture (and optionally shape) codes."""
    rng = np.random.default_rng(seed)
    levels = [-0.5, 0.0, 0.5, 1.0, 1.5]
    rows = []
    for p in range(pairs):
        a, b = rng.choice(8, 2, replace=False)
        for kind in ("shape", "texture", "both"):
            for lev in levels:
                moved = (kind in ("texture", "both")) * texture_weight + (kind in ("shape", "both")) * shape_weight
                t = np.clip(lev * moved, -1, 2)
                z = rng.normal(0, 0.3, 8)
                z[a] += 6 * (1 - t)
                z[b] += 6 * t
                rows.append((a, b, kind, lev, z))
    a, b, kind, lev, z = zip(*rows)
    return xr.DataArray(np.stack(z), dims=("sample", "unit"),
                        coords={"sample": np.arange(len(a)), "identity": ("sample", np.asarray(a)),
                                "morph_target": ("sample", np.asarray(b)),
                                "morph_type": ("sample", np.asarray(kind, dtype=object)),
                                "morph_level": ("sample", np.asarray(lev, dtype=float))})


def test_generalisation_detects_a_texture_reading_network():
    classes = [str(i) for i in range(8)]
    resp = morph_responses(_morph_logits(), classes)
    s = summarise(resp)
    po = s["p_original"]
    assert float(po.sel(morph_type="shape", morph_level=1.0)) > 0.95
    assert float(po.sel(morph_type="texture", morph_level=1.0)) < 0.05
    assert float(s["picks_target"].sel(morph_type="both", morph_level=1.5)) == 1.0
    assert float(s["picks_original"].sel(morph_type="texture", morph_level=-0.5)) == 1.0
    assert s.attrs["shape_minus_texture_tolerance"] > 0.3 and s.attrs["p_value"] < 0.05
    assert s.attrs["finding"].startswith("more tolerant of shape")
    # The mirror-image network: it reads shape, so the gap flips sign.
    flipped = summarise(morph_responses(_morph_logits(texture_weight=0.0, shape_weight=1.0), classes))
    assert flipped.attrs["shape_minus_texture_tolerance"] < -0.3
    assert flipped.attrs["finding"].startswith("more tolerant of texture")


def test_generalisation_errors():
    logits = _morph_logits()
    with pytest.raises(MorphError, match="identity network"):
        morph_responses(logits, [str(i) for i in range(8)], task="gender")
    with pytest.raises(MorphError, match="morph_level"):
        morph_responses(logits.drop_vars("morph_level"), [str(i) for i in range(8)])
    with pytest.raises(MorphError, match="not classes of the network"):
        morph_responses(logits, ["0", "1"])


def test_sign_flip_pvalue():
    assert sign_flip_pvalue(np.full(12, 0.5)) < 0.001
    rng = np.random.default_rng(1)
    assert sign_flip_pvalue(rng.normal(0, 1, 12)) > 0.05
    assert np.isnan(sign_flip_pvalue(np.array([np.nan])))


def test_report_embeds_figures_with_captions_and_key_numbers(planted, tmp_path):
    _, _, out = planted
    fig = tmp_path / "fig.png"
    plt.figure()
    plt.plot([0, 1])
    plt.savefig(fig)
    plt.close("all")
    cap = tmp_path / "cap.rst"
    cap.write_text("Curves of model ``{{ snakemake.wildcards.model }}``.")
    assert caption_text(cap, {"model": "m_s0"}) == "Curves of model m_s0."
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,test_accuracy\n1,0.5\n2,0.925\n")
    run_stage("profile", {}, {"mi": out}, {"out": tmp_path / "profile.zarr",
                                          **{f"{k}_figure": tmp_path / f"{k}.png" for k in ("profile", "units", "maps")}})
    spec = {"title": "T", "models": {"m_s0": {"metrics": str(metrics), "profile": str(tmp_path / "profile.zarr")}},
            "sections": [{"title": "S", "figures": [{"path": str(fig), "caption": str(cap),
                                                     "wildcards": {"model": "m_s0"}}]}]}
    html = build_report(spec, tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "Curves of model m_s0." in html
    assert "92.5%" in html and "block1_out" in html  # accuracy and the layer where identity peaks
    spec["sections"][0]["figures"][0]["path"] = str(tmp_path / "nope.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        build_report(spec, tmp_path / "report2.html")
    assert not (tmp_path / "report2.html").exists()


def _revcorr_fields(n_per_id=300, ids=2, verts=30, seed=0):
    """Random vertex fields whose planted vertices drive the identity evidence: (shape, texture, evidence, ids)."""
    rng = np.random.default_rng(seed)
    n = n_per_id * ids
    identity = np.repeat(np.arange(ids), n_per_id)
    shape = rng.normal(size=(n, verts, 3))
    texture = rng.normal(size=(n, verts, 3))
    evidence = rng.normal(size=n)
    planted_shape = {0: 5, 1: 9}
    for i, v in planted_shape.items():
        m = identity == i
        evidence[m] += shape[m, v] @ np.array([0.8, -0.5, 0.3])
    evidence += 0.7 * texture[:, 2, 0]  # one texture vertex matters for every identity
    return (xr.DataArray(shape, dims=("sample", "vertex", "coord"), coords={"coord": ["x", "y", "z"]}),
            xr.DataArray(texture, dims=("sample", "vertex", "channel"), coords={"channel": ["r", "g", "b"]}),
            xr.DataArray(evidence, dims="sample"), identity, planted_shape)


def test_revcorr_feature_maps_find_the_planted_vertices():
    from infodissect.analyses.revcorr import feature_maps

    shape, texture, evidence, identity, planted = _revcorr_fields()
    ds = feature_maps(shape, texture, evidence, identity, n_perm=100, alpha=0.01, seed=0)
    assert ds["shape_mi"].dims == ("identity", "vertex") and ds["shape_mi"].attrs["units"] == "bits"
    for i, v in planted.items():
        assert np.flatnonzero(ds["shape_significant"].sel(identity=str(i)).values).tolist() == [v]
        assert np.flatnonzero(ds["texture_significant"].sel(identity=str(i)).values).tolist() == [2]
    assert (ds["shape_threshold"] > 0).all()


def test_revcorr_on_a_face_model_and_its_figure(tmp_path):
    from infodissect.analyses.revcorr import (RevcorrError, identity_evidence, revcorr_analysis, vertex_fields)
    from infodissect.faces.model import build_face_model
    from infodissect.figures.revcorr import frontal_faces, revcorr_figure

    model = build_face_model(seed=0, shape_components=4, texture_components=4, texture_bands=2, rings=20,
                             segments=24)
    rng = np.random.default_rng(0)
    n, k, t = 160, 4, 8
    shape_coeff, texture_coeff = rng.normal(size=(n, k)), rng.normal(size=(n, t))
    disp, alb = vertex_fields(model, shape_coeff, texture_coeff)
    assert disp.dims == ("sample", "vertex", "coord") and disp.shape == (n, model.n_vertices, 3)
    expected = shape_coeff @ (model.shape_basis * model.shape_sigma[:, None]).numpy()
    np.testing.assert_allclose(disp.values.reshape(n, -1), expected, atol=1e-5)
    with pytest.raises(RevcorrError, match="another generator"):
        vertex_fields(model, shape_coeff[:, :3], texture_coeff)
    # Given each sample's ethnic group (as a store holds it: NumPy's variable-width strings), the albedo
    # offset is the rendered one, scaled to the group's skin.
    from infodissect.analyses.revcorr import ethnic_groups
    from infodissect.faces.albedo import texture_gain

    strings = getattr(np.dtypes, "StringDType", None)  # NumPy >= 2: what zarr 3 stores read back as
    groups = ethnic_groups(xr.Dataset(coords={"ethnicity": ("sample", np.array(
        ["A", "C"] * (n // 2), dtype=strings() if strings else object))}))
    _, scaled = vertex_fields(model, shape_coeff, texture_coeff, ethnicity=groups)
    np.testing.assert_allclose(scaled.values[1], texture_gain("C") * alb.values[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(scaled.values[0], alb.values[0])
    # A network whose identity logit follows the first shape component.
    identity = np.repeat([0, 1], n // 2)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), identity] += 2 * shape_coeff[:, 0]
    coords = {"identity": ("sample", identity)}
    ev = identity_evidence(xr.DataArray(logits, dims=("sample", "unit"), coords=coords), ["0", "1", "2"])
    np.testing.assert_allclose(ev.values, logits[np.arange(n), identity])
    with pytest.raises(RevcorrError, match="not classes"):
        identity_evidence(xr.DataArray(logits, dims=("sample", "unit"), coords=coords), ["0"])
    tree = xr.DataTree.from_dict({
        "/": xr.Dataset(coords={"shape_coeff": (("sample", "shape_pc"), shape_coeff),
                                "texture_coeff": (("sample", "texture_pc"), texture_coeff)},
                        attrs={"task": "identity", "classes": json.dumps(["0", "1", "2"]), "model": "m_s0"}),
        "logits": xr.Dataset({"activation": (("sample", "unit"), logits)}, coords=coords)})
    ds = revcorr_analysis(tree, model, n_perm=50, alpha=0.05)
    # Vertices carry information about the evidence as far as their 3-D motion reveals the first shape
    # component: the share of the component's variance that a linear read-out of the motion recovers (R^2,
    # so the motion carries -log2(1 - R^2) / 2 bits about it). None is significant where R^2 < 0.3, most are
    # where it is over 0.5. (Not the share of the vertex's motion the component makes: a motion along a
    # direction no other component moves reveals it wholly, however small; with generator 2.10's basis 12
    # vertices where it made under 1% of the motion, 7% of them, were found, rightly.)
    rows = (model.shape_basis * model.shape_sigma[:, None]).numpy().astype(np.float64).reshape(k, -1, 3)
    motion = rows.transpose(1, 2, 0)  # (vertex, coord, component): the motion is motion @ c
    r2 = np.einsum("vc,vc->v", np.linalg.pinv(motion, rcond=1e-6)[:, 0, :], motion[:, :, 0])  # (R^+ R)_00
    mi = ds["shape_mi"].sel(identity="0").values
    sig = ds["shape_significant"].sel(identity="0").values.astype(bool)
    # (The estimator gives no MI, NaN, where a vertex's motion is nearly rank-deficient: left out.)
    ok = ((motion**2).sum((1, 2)) > 1e-12) & np.isfinite(mi)
    low, high = ok & (r2 < 0.3), ok & (r2 > 0.5)
    assert low.sum() > 20 and high.sum() > 1000
    assert sig[low].mean() < 0.05 and sig[high].mean() > 0.8
    assert np.nanmean(mi[high]) > 5 * np.nanmean(mi[low])
    assert ds["shape_significant"].sum() > 0 and ds["mesh_faces"].shape[1] == 3
    assert len(frontal_faces(ds["vertex_position"].values, ds["mesh_faces"].values)) < ds.sizes["face"]
    revcorr_figure(ds, tmp_path / "revcorr.png")
    assert (tmp_path / "revcorr.png").stat().st_size > 10_000


def test_pose_invariance_separates_a_view_specific_from_an_invariant_layer(tmp_path):
    from infodissect.analyses.pose import pose_bins, pose_invariance
    from infodissect.figures.pose import pose_figure

    rng = np.random.default_rng(3)
    n, ids, units = 900, 6, 12
    identity = rng.integers(0, ids, n)
    yaw = rng.uniform(-45, 45, n)
    bins, labels = pose_bins(yaw, 3)
    assert np.bincount(bins).tolist() == [300, 300, 300] and len(labels) == 3
    code = rng.normal(size=(ids, units))
    view = rng.normal(size=(3, ids, units))  # a different code for every identity in every pose bin
    invariant = code[identity] + 0.5 * rng.normal(size=(n, units))
    specific = view[bins, identity] + 0.5 * rng.normal(size=(n, units))
    coords = {"identity": ("sample", identity), "yaw": ("sample", yaw)}
    tree = xr.DataTree.from_dict({
        "/": xr.Dataset(coords={"sample": np.arange(n)}),
        "view_specific": xr.Dataset({"activation": (("sample", "unit"), specific)}, coords=coords),
        "invariant": xr.Dataset({"activation": (("sample", "unit", "y", "x"),
                                                np.repeat(invariant[:, :, None, None], 2, 2).repeat(2, 3))},
                                coords=coords)})
    ds = pose_invariance(tree, ["view_specific", "invariant"], n_bins=3, grid=2)
    acc = ds["accuracy"]
    assert acc.dims == ("layer", "train_bin", "test_bin")
    assert float(ds["accuracy_same_pose"].sel(layer="view_specific")) > 0.9
    assert float(ds["accuracy_other_pose"].sel(layer="view_specific")) < 0.4  # near chance (1/6)
    assert float(ds["invariance"].sel(layer="invariant")) > 0.9
    assert float(ds["invariance"].sel(layer="view_specific")) < 0.5
    # Information about identity within each pose bin is high for both; across poses only for the invariant layer.
    assert float(ds["mi_within"].sel(layer="view_specific").min()) > 0.3
    assert float(ds["mi_across"].sel(layer="view_specific")) < 0.5 * float(ds["mi_within"].sel(
        layer="view_specific").mean())
    assert float(ds["mi_across"].sel(layer="invariant")) > 0.8 * float(ds["mi_within"].sel(layer="invariant").mean())
    pose_figure(ds, tmp_path / "pose.png")
    assert (tmp_path / "pose.png").stat().st_size > 10_000


def test_hidden_layers_carry_the_planted_diagnostic_feature(tmp_path):
    from infodissect.analyses.features import diagnostic_features, layer_feature_information
    from infodissect.analyses.revcorr import feature_maps

    shape, texture, evidence, identity, planted = _revcorr_fields(n_per_id=300)
    maps = feature_maps(shape, texture, evidence, identity, n_perm=50, alpha=0.01)
    feats = diagnostic_features({"shape": shape, "texture": texture}, evidence, identity, maps)
    # The shape feature of identity 0 is (up to scale) the planted vertex's displacement along the planted direction.
    m = identity == 0
    planted_dir = shape.values[m, planted[0]] @ np.array([0.8, -0.5, 0.3])
    assert abs(np.corrcoef(feats["shape_feature"].values[m], planted_dir)[0, 1]) > 0.95
    rng = np.random.default_rng(7)
    n = len(identity)
    shape_unit = feats["shape_feature"].values + 0.3 * rng.normal(size=n)
    noise = rng.normal(size=(n, 3))
    tree = xr.DataTree.from_dict({
        "/": xr.Dataset(coords={"sample": np.arange(n)}),
        "reads_shape": xr.Dataset({"activation": (("sample", "unit"), np.column_stack([shape_unit, noise]))}),
        "noise": xr.Dataset({"activation": (("sample", "unit", "y", "x"), rng.normal(size=(n, 4, 2, 2)))})})
    ds = layer_feature_information(tree, ["reads_shape", "noise"], feats)
    assert ds["mi"].dims == ("layer", "feature") and ds["mi"].attrs["units"] == "bits"
    assert float(ds["mi_max"].sel(layer="reads_shape", feature="shape")) > 1.0
    assert float(ds["mi_max"].sel(layer="noise", feature="shape")) < 0.05
    assert float(ds["mi_max"].sel(layer="reads_shape", feature="texture")) < 0.05
    # The shape unit shares its information about the feature with the decision (the evidence): redundancy.
    assert float(ds["coinfo"].sel(layer="reads_shape", feature="shape")) < -0.05
    from infodissect.figures.revcorr import features_figure

    features_figure(ds, tmp_path / "features.png")
    assert (tmp_path / "features.png").stat().st_size > 10_000


def _pixel_mi_store(path):
    """A pixel MI store (group `pixels`) with known numbers: 3 factors, 2 channels, 2 x 2 pixels.

    identity: max 0.5 bits at (g, 1, 0); significant at 2 positions (one of them in both channels).
    yaw: max 0.03 bits; significant at 1 position. expression: nothing above its threshold (max 0.004)."""
    mi = np.zeros((3, 2, 2, 2), dtype=np.float32)
    mi[0, 0, 0, 0], mi[0, 1, 0, 0], mi[0, 1, 1, 0] = 0.2, 0.3, 0.5
    mi[1, 0, 1, 1] = 0.03
    mi[2] = 0.004
    mi[2, 0, 0, 1] = -0.001  # bias-corrected MI may dip below 0
    threshold = np.array([0.1, 0.02, 0.01])
    ds = xr.Dataset({"mi": (("factor", "channel", "y", "x"), mi),
                     "significant": (("factor", "channel", "y", "x"), mi > threshold[:, None, None, None]),
                     "threshold": ("factor", threshold),
                     "factor_kind": ("factor", np.asarray(["categorical", "continuous", "categorical"], dtype=object))},
                    coords={"factor": np.asarray(["identity", "yaw", "expression"], dtype=object),
                            "given": ("factor", np.asarray(["", "expression", ""], dtype=object)),  # yaw | expression
                            "channel": np.asarray(["r", "g"], dtype=object), "y": [0, 1], "x": [0, 1]},
                    attrs={"set": "analysis", "n_samples": 2048, "n_perm": 100, "alpha": 0.05, "units": "bits"})
    with atomic_store(path) as tmp:
        xr.DataTree.from_dict({"/": xr.Dataset(attrs={"model": "pixels"}), "pixels": ds}).to_zarr(
            tmp, zarr_format=3, consolidated=True)
    return path


def _model_dir(root, name, task, test_accuracy, counts, heldout=None):
    """A trained model's directory as the training stage (and the held-out evaluation) leaves it."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"spec": {"task": task}, "test_store": "results/stimuli/test.zarr"}))
    (d / "metrics.csv").write_text(f"epoch,test_accuracy\n1,0.1\n2,{test_accuracy}\n")
    rows = "".join(f"{task},{level},,,{n},0.5\n" for level, n in counts.items())
    (d / "accuracy_by_factor.csv").write_text("factor,level,low,high,n,accuracy\n" + rows + "yaw,bin0,-45,0,9,0.5\n")
    if heldout is not None:
        (d / "heldout.json").write_text(json.dumps(heldout))
        return d, d / "heldout.json"
    return d


def test_factor_visibility_numbers_from_a_known_pixel_store(tmp_path):
    from infodissect.analyses.visibility import HELDOUT, TEST, factor_visibility, invisible_factors, model_score

    pixels = open_tree(_pixel_mi_store(tmp_path / "pixels.zarr"))["pixels"].to_dataset()
    models = [model_score(_model_dir(tmp_path, "identity_s0", "identity", 0.875, {"0": 30, "1": 10})),
              model_score(*_model_dir(tmp_path, "gender_s1", "gender", 1.0, {"female": 5, "male": 15},
                                      {"accuracy": 0.6, "chance": 0.55, "n": 40, "set": "heldout"})),
              model_score(_model_dir(tmp_path, "age_s2", "ethnicity", 0.7, {"A": 10, "B": 10, "C": 20}))]
    ds = factor_visibility(pixels, models)
    assert list(ds["factor"].values) == ["identity", "yaw", "expression"]
    np.testing.assert_allclose(ds["max_mi"].values, [0.5, 0.03, 0.004], rtol=1e-6)
    np.testing.assert_allclose(ds["share_significant"].values, [2 / 4, 1 / 4, 0.0])  # positions, any channel
    np.testing.assert_allclose(ds["threshold"].values, [0.1, 0.02, 0.01])
    assert ds["max_mi"].attrs["units"] == "bits" and list(ds["factor_kind"].values) == [
        "categorical", "continuous", "categorical"] and bool(ds["intrinsic"].sel(factor="identity"))
    assert invisible_factors(ds) == ["expression"]
    assert list(ds["given"].values) == ["", "expression", ""]
    # Identity: test-set accuracy, chance = the largest class's share; others: held-out identities when evaluated.
    assert list(ds["model"].values) == ["identity_s0", "gender_s1", "age_s2"]
    np.testing.assert_allclose(ds["accuracy"].values, [0.875, 0.6, 0.7])
    np.testing.assert_allclose(ds["chance"].values, [0.75, 0.55, 0.5])
    np.testing.assert_allclose(ds["test_accuracy"].values, [0.875, 1.0, 0.7])
    assert list(ds["n"].values) == [40, 40, 40] and list(ds["task"].values) == ["identity", "gender", "ethnicity"]
    assert list(ds["evaluated_on"].values) == [TEST, HELDOUT, TEST]
    assert list(ds["eval_set"].values) == ["test", "heldout", "test"] and ds.attrs["set"] == "analysis"
    # Without pixel MI the model part stands alone.
    alone = factor_visibility(None, models[:1])
    assert alone.sizes["factor"] == 0 and alone.attrs["pixels"].startswith("not measured")


def test_visibility_command_writes_store_figure_and_the_report_shows_the_table(tmp_path):
    from infodissect.cli import main

    pixels = _pixel_mi_store(tmp_path / "pixels.zarr")
    ident = _model_dir(tmp_path, "identity_s0", "identity", 0.875, {"0": 30, "1": 10})
    gender, gender_heldout = _model_dir(tmp_path, "gender_s1", "gender", 1.0, {"female": 5, "male": 15},
                                        {"accuracy": 0.6, "chance": 0.55, "n": 40, "set": "heldout",
                                         "identities": 4})
    out, fig = tmp_path / "visibility.zarr", tmp_path / "factor_visibility.png"
    # Without --heldout a heldout.json in the directory (from an earlier run) is not scored.
    stale = tmp_path / "stale.zarr"
    assert main(["analyses", "visibility", "--pixels", str(pixels), "--models", str(ident), str(gender),
                 "--out", str(stale), "--figure", str(tmp_path / "stale.png")]) == 0
    from infodissect.analyses.visibility import TEST

    assert list(xr.open_zarr(stale)["evaluated_on"].values) == [TEST, TEST]
    np.testing.assert_allclose(xr.open_zarr(stale)["accuracy"].values, [0.875, 1.0])
    assert main(["analyses", "visibility", "--pixels", str(pixels), "--models", str(ident), str(gender),
                 "--heldout", str(gender_heldout), "--out", str(out), "--figure", str(fig)]) == 0
    # A held-out file of a model not given is refused.
    assert main(["analyses", "visibility", "--models", str(ident), "--heldout", str(gender_heldout),
                 "--out", str(tmp_path / "v3.zarr"), "--figure", str(tmp_path / "v3.png")]) == 2
    ds = xr.open_zarr(out)
    assert float(ds["max_mi"].sel(factor="identity")) == pytest.approx(0.5) and ds.sizes["model"] == 2
    assert fig.stat().st_size > 10_000
    cap = tmp_path / "cap.rst"
    cap.write_text("Visibility.")
    spec = {"title": "T", "models": {"gender_s1": {"heldout": str(gender / "heldout.json")}},
            "sections": [{"title": "Factor visibility", "visibility": str(out),
                          "figures": [{"path": str(fig), "caption": str(cap)}]}]}
    html = build_report(spec, tmp_path / "report.html").read_text()
    table = html[html.index("<h2>Factor visibility</h2>"):]
    assert "max pixel MI (bits)" in table and "<td>0.500</td>" in table and "<td>50.0%</td>" in table
    assert "gender_s1: 60.0% (55.0%) on held-out identities" in table  # on the gender row, no pixel MI for it
    assert "no pixel above the threshold: <b>expression</b>" in table
    assert "<th>given</th>" in table and "<td>yaw</td>\n      <td>continuous</td>\n      <td>expression</td>" in table
    assert "accuracy on held-out identities" in html and "60.0% (chance 55.0%; 4 people" in html
    spec["sections"][0]["visibility"] = str(tmp_path / "nope.zarr")
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        build_report(spec, tmp_path / "report2.html")
    # A store that is not a pixel MI store is refused, naming it.
    assert main(["analyses", "visibility", "--pixels", str(out), "--models", str(ident), "--out",
                 str(tmp_path / "v2.zarr"), "--figure", str(tmp_path / "v2.png")]) == 2
