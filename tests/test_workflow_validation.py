"""The workflow validates its config at start-up, before any job runs."""

from __future__ import annotations

import re

import yaml
from workflow_cli import ROOT, snakemake


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
