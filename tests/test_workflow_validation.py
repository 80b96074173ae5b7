"""The workflow validates its config at start-up, before any job runs."""

from __future__ import annotations

import json
import re

import pytest

import yaml
from workflow_cli import ROOT, job_counts, snakemake


def test_bad_config_stops_the_workflow_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stimuli": {"render": {"resolution": 0}}}))
    result = snakemake("-n", "--configfile", str(bad))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "stimuli.render.resolution" in output, output
    assert "rule stimuli_" not in output, output


def test_dry_run_of_test_config_plans_all():
    # --forceall: plan every job whatever results/ already holds
    result = snakemake("-n", "--forceall", "--configfile", "config/test.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^rule all:", output, re.MULTILINE), output
    assert re.search(r"^stimuli_render\s+\d+", output, re.MULTILINE), output
    for name in yaml.safe_load((ROOT / "config" / "test.yaml").read_text())["stimuli"]["sets"]:
        assert f"results/stimuli/{name}.zarr" in output


def test_slurm_profile_dry_run_plans_every_job(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    config = ["--configfile", str(ROOT / "config" / "config.yaml")]
    local = snakemake("-n", "--directory", str(tmp_path), *config)
    slurm = snakemake("-n", "--directory", str(tmp_path), "--workflow-profile",
                      str(ROOT / "workflow" / "profiles" / "slurm"), *config)
    out = slurm.stdout + slurm.stderr
    assert slurm.returncode == 0, out
    counts = job_counts(out)
    assert counts == job_counts(local.stdout + local.stderr)
    for rule in ("stimuli_render", "train_model", "train_evaluate", "activations_extract", "mi_layers", "mi_pixels",
                 "analyses_profile", "analyses_generalisation", "analyses_visibility", "report", "all"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    # The profile's per-rule resources reach the jobs: a GPU for extraction, memory for MI.
    extract = out[out.index("rule activations_extract:"):]
    assert "gpu=1" in extract[:extract.index("\n\n")]
    mi = out[out.index("rule mi_layers:"):]
    assert "mem_mb=64000" in mi[:mi.index("\n\n")]


def test_the_paper_config_at_26m_training_rows_plans_every_job_within_a_minute(tmp_path):
    """Issue 18: `snakemake -n --workflow-profile workflow/profiles/slurm --configfile config/paper.yaml`, the
    paper's 13,000 images per identity (26M rows), plans in under 60 s; training renders on the fly, so the
    training set has no render jobs."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    import time

    from infodissect.config import load_config
    from infodissect.stimuli.design import design_size

    paper = load_config(ROOT / "config" / "paper.yaml")
    assert design_size(paper["stimuli"]["sets"]["train"], paper["stimuli"]) == 26_000_000
    start = time.perf_counter()
    result = snakemake("-n", "--directory", str(tmp_path), "--workflow-profile", str(ROOT / "workflow" / "profiles" / "slurm"),
                       "--configfile", str(ROOT / "config" / "paper.yaml"))
    seconds = time.perf_counter() - start
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    counts = job_counts(out)
    for rule in ("stimuli_design", "train_model", "activations_extract", "mi_layers", "analyses_profile", "report"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    assert "results/stimuli/train.zarr" not in out and "results/stimuli/designs/train.zarr" in out
    assert sum(counts.values()) < 200, counts  # not a job per 1,024 training rows
    assert seconds < 60, f"planning took {seconds:.0f} s"


def test_a_model_the_config_does_not_name_is_refused_before_any_job():
    result = snakemake("results/models/gender_s3/model.pt", "-n", "--configfile", "config/test.yaml")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "model 'gender_s3' is not in training.models" in output, output


def test_a_multi_node_training_job_starts_one_launcher_per_node():
    result = snakemake("-n", "-p", "--forceall", "--configfile", "config/test.yaml", "--config",
                       "training={nodes: 2}", "--", "results/models/identity_s0/model.pt")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 infodissect train launch --nodes 2" in output, output
    assert "nodes=2, tasks_per_node=1, mpi=srun" in output, output


def test_demo_plans_heldout_evaluation_and_visibility_and_analyses_only_activations_models(tmp_path):
    result = snakemake("-n", "-p", "--forceall", "--directory", str(tmp_path), "--configfile",
                       str(ROOT / "config" / "config.yaml"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    counts = job_counts(out)
    # Three models trained, the one that is not an identity model evaluated on the held-out identities,
    # only identity_s0 (activations.models) extracted and analysed; relevance for all three, then compared.
    assert counts["train_model"] == 3 and counts["train_evaluate"] == 1 and counts["train_figure"] == 3
    assert counts["analyses_relevance"] == 3 and counts["analyses_relevance_compare"] == 1
    assert ("infodissect analyses relevance_compare --relevance results/relevance/identity_s0/test.zarr "
            "results/relevance/identity_s1/test.zarr results/relevance/gender_s1/test.zarr --models "
            "results/models/identity_s0/model.pt results/models/identity_s1/model.pt "
            "results/models/gender_s1/model.pt --stimuli results/stimuli/test.zarr") in out
    assert counts["activations_extract"] == 3 + 4 and counts["mi_layers"] == 1 and counts["analyses_profile"] == 1
    # The analysed model attacked on the test set, the other identity seed judging the transfer; one store per budget.
    assert counts["analyses_adversarial"] == 1
    assert ("infodissect analyses adversarial --stimuli results/stimuli/test.zarr --models "
            "results/models/identity_s0/model.pt --transfer results/models/identity_s1/model.pt") in out
    assert ("--out results/stimuli/test_adv_2.zarr results/stimuli/test_adv_4.zarr results/stimuli/test_adv_8.zarr "
            "--summary results/adversarial/test.zarr") in out
    # ... and its units compared on the real and adversarial test images (the 4 more extractions above).
    assert counts["analyses_adversarial_consistency"] == 1
    assert ("--activations results/activations/identity_s0/test.zarr --adversarial "
            "results/activations/identity_s0/test_adv_2.zarr results/activations/identity_s0/test_adv_4.zarr "
            "results/activations/identity_s0/test_adv_8.zarr") in out
    assert "analyses_adversarial_compare" not in counts  # one model's units: nothing to compare them with
    assert counts["analyses_visibility"] == 1 and counts["mi_pixels"] == 1
    for model in ("gender_s1",):
        assert (f"infodissect train evaluate --model results/models/{model}/model.pt --stimuli "
                f"results/stimuli/heldout.zarr --train results/stimuli/designs/train.zarr") in out
        assert f"results/activations/{model}/" not in out
    assert "results/models/identity_s0/heldout.json" not in out
    assert ("infodissect analyses visibility --pixels results/mi/pixels/analysis.zarr --models "
            "results/models/identity_s0 results/models/identity_s1 results/models/gender_s1 --heldout "
            "results/models/gender_s1/heldout.json") in out
    assert "results/logs/analyses/visibility.log" in out and "results/logs/train/evaluate_gender_s1.log" in out
    # The held-out set is a stimulus set like any other (design, render, gather).
    assert "results/stimuli/designs/heldout.zarr" in out and "results/stimuli/heldout.zarr" in out
    # The chain to the longest job, the layers' MI, goes first: the training, test and MI sets, the analysed
    # model's training, its activations on the MI set, the MI (2-core demo: one core idle 79 s of 487 without).
    first = {(rule, wildcards.split(", shard=")[0]) for rule, wildcards in _prioritised(out)}
    assert first == {*((r, f"set={s}") for r in ("stimuli_design", "stimuli_render", "stimuli_gather")
                       for s in ("train", "test", "analysis")),
                     ("train_model", "model=identity_s0"), ("activations_extract", "model=identity_s0, set=analysis"),
                     ("mi_layers", "model=identity_s0, set=analysis")}, first
    # [] = every trained model is analysed.
    every = snakemake("-n", "--forceall", "--directory", str(tmp_path), "--configfile",
                      str(ROOT / "config" / "config.yaml"), "--config", "activations={models: []}")
    assert every.returncode == 0, every.stderr[-2000:]
    counts = job_counts(every.stdout)
    # 3 models x 3 sets; the two identity models (now the ensemble) also on the test set and its 3 adversarial sets
    assert counts["activations_extract"] == 9 + 2 * 4 and counts["analyses_adversarial_consistency"] == 2


def test_heldout_evaluation_of_an_identity_model_is_refused_before_any_job():
    result = snakemake("results/models/identity_s0/heldout.json", "-n", "--configfile", "config/test.yaml")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "model 'identity_s0' is not evaluated on held-out identities: an identity model has no class" in output


def test_a_heldout_set_without_heldout_identities_stops_the_workflow_naming_the_key():
    result = snakemake("-n", "--configfile", "config/test.yaml", "--config", "stimuli={heldout_identities: 0}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "stimuli.sets.heldout.pool: heldout needs held-out identities" in output, output


def test_a_config_that_trains_no_model_plans_stimuli_only(tmp_path):
    # activations.models keeps its default ([identity_s0]); with nothing trained, nothing is extracted.
    result = snakemake("-n", "--forceall", "--directory", str(tmp_path), "--configfile",
                       str(ROOT / "config" / "test.yaml"), "--config", "training={models: []}")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    counts = job_counts(out)
    assert counts["stimuli_render"] > 0
    assert not {"train_model", "activations_extract", "mi_layers", "analyses_profile"} & set(counts), counts
    assert not _prioritised(out)  # no layer is measured: no chain goes first


def _prioritised(dry_run: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job a dry run's output lists with a priority above 0."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if rule and re.search(r"^\s+priority: [1-9]", block, re.MULTILINE):
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
            jobs.append((rule.group(1), wildcards.group(1) if wildcards else ""))
    return jobs


def test_adversarially_trained_models_carry_the_attack_in_their_training_spec(tmp_path):
    result = snakemake("-n", "-p", "--forceall", "--directory", str(tmp_path), "--configfile",
                       str(ROOT / "config" / "config.yaml"), "--config",
                       "training={adversarial: {models: [identity_s1], steps: 2}}", "--",
                       "results/models/identity_s0/model.pt", "results/models/identity_s1/model.pt")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    specs = re.findall(r"--spec '(\{[^']*\})' --train results/stimuli/train.zarr --test results/stimuli/test.zarr "
                       r"--out results/models/(\w+)", out)
    by_model = {model: json.loads(spec) for spec, model in specs}
    assert by_model["identity_s1"]["adversarial"] == {"budget": 8, "layer": "block3_out", "steps": 2, "weight": 1.0}
    assert "adversarial" not in by_model["identity_s0"]


def test_adversarial_config_trains_a_consistency_model_and_compares_it_with_the_baseline(tmp_path):
    """config/adversarial.yaml: a baseline and a consistency-trained model, attacked together (both white-box),
    each one's units measured on the same adversarial images, then compared side by side in the report."""
    target = "results/figures/test_adversarial_across_models.png"
    result = snakemake("-n", "-p", "--forceall", "--directory", str(tmp_path), target, "results/report.html",
                       "--configfile", str(ROOT / "config" / "adversarial.yaml"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    counts = job_counts(out)
    assert counts["train_model"] == 2 and counts["analyses_adversarial"] == 1
    assert counts["analyses_adversarial_consistency"] == 2 and counts["analyses_adversarial_compare"] == 1
    specs = re.findall(r"--spec '(\{[^']*\})' --train results/stimuli/train.zarr --test results/stimuli/test.zarr "
                       r"--out results/models/(identity_s\d)", out)
    assert {m: '"adversarial"' in spec for spec, m in specs} == {"identity_s0": False, "identity_s2": True}
    assert ("infodissect analyses adversarial --stimuli results/stimuli/test.zarr --models "
            "results/models/identity_s0/model.pt results/models/identity_s2/model.pt  --spec") in out
    assert ("infodissect analyses adversarial_compare --consistency "
            "results/adversarial/identity_s0/test_consistency.zarr results/adversarial/identity_s2/test_consistency.zarr"
            " --metrics results/models/identity_s0/metrics.csv results/models/identity_s2/metrics.csv --summary "
            "results/adversarial/test.zarr --spec '{\"accuracy_margin\": 2.0}'") in out
    assert "results/logs/adversarial/test_across_models.log" in out
