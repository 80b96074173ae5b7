"""The workflow validates its config at start-up, before any job runs."""

from __future__ import annotations

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
    for rule in ("stimuli_render", "train_model", "activations_extract", "mi_layers", "mi_pixels",
                 "analyses_profile", "analyses_generalisation", "report", "all"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    # The profile's per-rule resources reach the jobs: a GPU for extraction, memory for MI.
    extract = out[out.index("rule activations_extract:"):]
    assert "gpu=1" in extract[:extract.index("\n\n")]
    mi = out[out.index("rule mi_layers:"):]
    assert "mem_mb=64000" in mi[:mi.index("\n\n")]


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
