"""The stimulus stage end to end: `snakemake` on config/test.yaml in a scratch directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr
from workflow_cli import ROOT, job_counts, snakemake


def run_test_config(workdir: Path, *args: str):
    """The test config's pipeline, with ``workdir`` as the working directory."""
    return snakemake("--directory", str(workdir), "--configfile", str(ROOT / "config" / "test.yaml"), *args, cores=2)


def test_pipeline_runs_and_second_run_does_nothing(tmp_path):
    run = run_test_config(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("stimuli_factors.png", "stimuli_identities.png", "identity_s0_training.png",
                 "expression_s1_training.png", "factor_visibility.png"):
        assert (tmp_path / "results" / "figures" / name).stat().st_size > 10_000
    # Training ran through torchrun with 2 Gloo processes (config/test.yaml) and left its outputs.
    model_dir = tmp_path / "results" / "models" / "identity_s0"
    assert len((model_dir / "metrics.csv").read_text().splitlines()) == 1 + 2  # header + 2 epochs
    assert "identity" in (model_dir / "accuracy_by_factor.csv").read_text()
    assert (tmp_path / "results" / "checkpoints" / "identity_s0" / "last.pt").exists()
    assert "on 2 process(es)" in (tmp_path / "results" / "logs" / "train" / "identity_s0.log").read_text()
    # Activations of the trained model on the analysis and revcorr sets, labelled.
    tree = xr.open_datatree(tmp_path / "results" / "activations" / "identity_s0" / "analysis.zarr", engine="zarr")
    assert tree["block3_out"].activation.dims == ("sample", "unit", "y", "x") and "yaw" in tree["block3_out"].coords
    assert (tmp_path / "results" / "activations" / "identity_s0" / "revcorr.zarr").exists()
    assert "total" in (tmp_path / "results" / "logs" / "activations" / "identity_s0" / "analysis.log").read_text()
    # MI of every layer and of the pixels with every factor, the analyses and the report.
    res = tmp_path / "results"
    mi = xr.open_datatree(res / "mi" / "identity_s0" / "analysis.zarr", engine="zarr")
    assert mi["block2_out"].mi.dims == ("factor", "unit", "y", "x") and mi["pool"].mi.dims == ("factor", "unit")
    assert mi["block2_out"].mi.attrs["units"] == "bits" and mi["block2_out"].attrs["n_perm"] == 20
    assert "identity" in mi["logits"].factor.values and np.isfinite(mi["logits"].threshold.values).all()
    pixels = xr.open_datatree(res / "mi" / "pixels" / "analysis.zarr", engine="zarr")
    assert pixels["pixels"].mi.dims == ("factor", "channel", "y", "x")
    profile = xr.open_zarr(res / "analyses" / "identity_s0" / "analysis_profile.zarr")
    assert list(profile.layer.values)[:2] == ["pixels", "relu_stem"] and profile.layer.size == 12
    gen = xr.open_zarr(res / "analyses" / "identity_s0" / "generalisation.zarr")
    assert set(gen.morph_type.values) == {"shape", "texture", "both"} and "p_value" in gen.attrs
    revcorr = xr.open_zarr(res / "analyses" / "identity_s0" / "revcorr.zarr")
    assert revcorr.shape_mi.dims == ("identity", "vertex") and revcorr.sizes["identity"] == 2
    features = xr.open_zarr(res / "analyses" / "identity_s0" / "features.zarr")
    assert features.coinfo.dims == ("layer", "feature") and features.layer.size == 11
    pose = xr.open_zarr(res / "analyses" / "identity_s0" / "pose.zarr")
    assert pose.accuracy.dims == ("layer", "train_bin", "test_bin") and pose.attrs["pose"] == "yaw"
    for name in ("analysis_layer_profile", "analysis_units", "analysis_spatial_maps", "generalisation", "revcorr",
                 "features", "pose"):
        assert (res / "figures" / f"identity_s0_{name}.png").stat().st_size > 10_000
    # The expression model is trained and evaluated on the held-out identities, but not analysed
    # (activations.models: [identity_s0]); the identity model is not evaluated on people it has no class for.
    heldout = json.loads((res / "models" / "expression_s1" / "heldout.json").read_text())
    assert heldout["set"] == "heldout" and heldout["pool"] == "heldout" and heldout["shared_identities"] == 0
    assert heldout["n"] == 16 and heldout["identities"] == 2 and 0 <= heldout["accuracy"] <= 1
    assert not (res / "models" / "identity_s0" / "heldout.json").exists()
    assert not (res / "activations" / "expression_s1").exists()
    held = xr.open_zarr(res / "stimuli" / "heldout.zarr")
    assert held.attrs["pool"] == "heldout" and set(held.identity.values.tolist()) == {4, 5}
    # Factor visibility: pixel MI per measured factor, accuracy per trained model, in the report as a table.
    vis = xr.open_zarr(res / "analyses" / "visibility.zarr")
    assert list(vis.factor.values) == ["identity", "gender", "expression", "expression_intensity", "yaw",
                                       "light_azimuth", "scale", "background"]
    # A graded factor is measured given its parent, in the pixels (mi.given) and in every layer (test config:
    # mi.given_layers).
    assert vis["given"].sel(factor="expression_intensity") == "expression" and vis["given"].sel(factor="yaw") == ""
    assert str(mi["pool"]["given"].sel(factor="expression_intensity").values) == "expression"
    assert vis.max_mi.attrs["units"] == "bits" and list(vis.model.values) == ["identity_s0", "expression_s1"]
    assert vis.accuracy.sel(model="expression_s1") == heldout["accuracy"]
    assert vis.evaluated_on.sel(model="identity_s0") == "test set (training identities)"
    report = (res / "report.html").read_text()
    for kind in ("factors", "identities", "portraits"):  # the stimulus figures at the extra resolution
        assert (res / "figures" / f"stimuli_{kind}_48.png").stat().st_size > 5_000
    # 26 + the adversarial unit maps + the dissections of test_adv_0 and test_adv_8 (two figures each)
    assert report.count("<figure>") == 31 and "test-set accuracy (training identities)" in report and "generalisation gap" in report
    assert "<h2>Factor visibility</h2>" in report and "max pixel MI (bits)" in report
    assert report.index("Factor visibility") < report.index("<h2>Model identity_s0</h2>")
    assert "accuracy on held-out identities" in report
    # Network dissection of the analysed model on the analysis set: a node per map layer and the pixels,
    # NetDissect-Lite's tally, the baselines, and the report's tables.
    dis = xr.open_datatree(res / "dissection" / "identity_s0" / "analysis.zarr", engine="zarr")
    assert dis["block2_out"].iou.dims == ("quantile", "unit", "concept") and "pixels" in dis.children
    assert {"eyes", "mouth_interior", "expression=happiness"} <= set(dis.concept.values.tolist())
    assert list(dis.network.values) == ["trained", "untrained", "epoch 0", "epoch 1"] and "epoch0" in dis.children
    assert (res / "models" / "identity_s0" / "snapshots" / "epoch1.pt").exists()
    assert dis["rotation"].detectors.dims == ("alpha", "quantile")
    assert list(dis.layer.values)[:2] == ["pixels", "relu_stem"]
    rot = dis["rotation"].to_dataset()  # alpha 0: the layer itself, through the rotation path
    same = dis.to_dataset().sel(network="trained", layer=rot.attrs["layer"])
    assert (rot.detectors.sel(alpha=0.0) == same.detectors).all() and (rot.best_iou.sel(alpha=0.0) == same.best_iou).all()
    tally = (res / "dissection" / "identity_s0" / "analysis_tally.csv").read_text().splitlines()
    assert tally[0].startswith("layer,unit,category,label,score,part-label") and len(tally) == 1 + 3 + 8 * 3 + 16 * 2 + 32 * 2 + 64 * 2
    assert "Network dissection per layer" in report and "most informative factor of the detectors" in report and "dissection (analysis, q = 0.005): detector units" in report
    # Relevance of both trained models on the test set, and the two compared.
    for model in ("identity_s0", "expression_s1"):
        rel = xr.open_zarr(res / "relevance" / model / "test.zarr")
        assert rel.relevance.dims == ("attribution", "sample", "y", "x") and rel.sizes["sample"] == 16
        assert rel.attrs["task"] == model.split("_")[0] and np.isfinite(rel.aopc.values).all()
        assert set(rel.part.values.tolist()) >= {"mouth", "mouth_interior", "hair"}
        # The analysed model's reverse-correlation features per part, beside its relevance.
        assert ("feature_part_share" in rel) == (model == "identity_s0")
    cmp = xr.open_zarr(res / "relevance" / "test_across_models.zarr")
    assert cmp.map_correlation.dims == ("model", "other") and np.allclose(np.diag(cmp.map_correlation.values), 1)
    assert "<h2>Relevance across models</h2>" in report and "relevance masking AOPC" in report
    # Adversarial sets of the test set: stimulus stores within budget, read by extraction unchanged; budget 0 is
    # the source set, so its activations equal the source's bit for bit.
    src = xr.open_zarr(res / "stimuli" / "test.zarr")
    for budget in (0, 8):
        adv = xr.open_zarr(res / "stimuli" / f"test_adv_{budget}.zarr")
        diff = adv.image.values.astype(int) - src.image.values.astype(int)
        assert adv.image.dims == src.image.dims and np.abs(diff).max() <= budget and (budget == 0) == (diff == 0).all()
        assert np.array_equal(adv.parts.values, src.parts.values) and adv.identity.values.tolist() == src.identity.values.tolist()
        assert json.loads(adv.attrs["adversarial"])["budget"] == budget and adv.target.values.tolist() != adv.identity.values.tolist()
    a0 = xr.open_datatree(res / "activations" / "identity_s0" / "test_adv_0.zarr", engine="zarr")
    a_src = xr.open_datatree(res / "activations" / "identity_s0" / "test.zarr", engine="zarr")
    for layer in ("relu_stem", "block4_out", "logits"):
        assert np.array_equal(a0[layer].activation.values, a_src[layer].activation.values)
    summ = xr.open_zarr(res / "adversarial" / "test.zarr")
    assert summ.success.dims == ("budget", "model") and summ.budget.values.tolist() == [0, 8]
    assert "<h2>Adversarial sets</h2>" in report and "targeted success at 8/255" in report
    # The analysed model's units on real vs adversarial images: at budget 0 every unit is perfectly consistent.
    cons = xr.open_zarr(res / "adversarial" / "identity_s0" / "test_consistency.zarr")
    assert cons.response_correlation.dims == ("budget", "layer", "unit") and cons.budget.values.tolist() == [0, 8]
    at0 = cons.sel(budget=0)
    live = np.isfinite(at0.response_correlation.values)
    assert live.sum() > 50 and np.allclose(at0.response_correlation.values[live], 1, atol=1e-6)
    assert np.allclose(at0.topk_overlap.values[np.isfinite(at0.topk_overlap.values)], 1)
    assert np.allclose(at0.distance_ratio.values, 0) and "unit response correlation" in report
    # Dissected on test_adv_0 (the same images, unattacked) and test_adv_8: every unit keeps its label at budget 0.
    kept0 = at0.label_kept.values[np.isfinite(at0.label_kept.values)]
    assert kept0.size > 50 and (kept0 == 1).all() and np.isfinite(cons.label_kept.sel(budget=8).values).any()
    assert "units keeping their real-image label" in report
    assert (res / "figures" / "test_adversarial.png").stat().st_size > 10_000
    assert (res / "figures" / "identity_s0_test_adversarial_units.png").stat().st_size > 10_000
    # Changing an MI setting reruns the MI jobs and what reads them, nothing upstream.
    changed = job_counts(run_test_config(tmp_path, "-n", "--config", "mi={n_perm: 10}").stdout)
    # (the relevance of identity_s0 reads its revcorr features; the comparison reads that relevance)
    assert set(changed) == {"mi_layers", "mi_pixels", "analyses_profile", "analyses_revcorr", "analyses_visibility",
                            "analyses_relevance", "analyses_relevance_compare", "report", "all"}
    ds = xr.open_zarr(tmp_path / "results" / "stimuli" / "analysis.zarr")
    assert ds.image.dims == ("sample", "y", "x", "channel") and ds.image.shape[1:] == (32, 32, 3)
    assert ds.parts.attrs["part_names"][0] == "background"
    img = ds.image.values
    assert img.std() > 10 and len(np.unique(img[:, 16, 16, 0])) > 1
    assert not list((tmp_path / "results" / "stimuli").glob("*.partial"))
    logs = list((tmp_path / "results" / "logs").rglob("*.log"))
    bench = list((tmp_path / "results" / "benchmarks").rglob("*.tsv"))
    assert logs and bench
    again = run_test_config(tmp_path, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
