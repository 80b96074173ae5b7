"""The workflow validates its config at start-up, before any job runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(BIN / "snakemake"), "--nolock", "--cores", "1", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def test_bad_config_stops_the_workflow_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stimuli": {"render": {"resolution": 0}}}))
    result = snakemake("-n", "--configfile", str(bad))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "stimuli.render.resolution" in output, output
    assert "rule stimuli_" not in output, output


def test_dry_run_of_test_config_plans_all():
    pytest.importorskip(
        "infodissect.stimuli.design",
        reason="infodissect.stimuli.design (design_size) is not written yet",
    )
    # --forceall: plan every job whatever results/ already holds
    result = snakemake("-n", "--forceall", "--configfile", "config/test.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert re.search(r"^rule all:", output, re.MULTILINE), output
    assert re.search(r"^stimuli_render\s+\d+", output, re.MULTILINE), output
    for name in yaml.safe_load((ROOT / "config" / "test.yaml").read_text())["stimuli"]["sets"]:
        assert f"results/stimuli/{name}.zarr" in output
