"""Test-session settings: the longest tests start first, so that under ``pytest -n 2`` (pytest-xdist, what
scripts/test.sh runs) the end-to-end pipeline overlaps the rest of the suite instead of ending it."""

from __future__ import annotations

import warnings

import pytest

# Tests that take tens of seconds on 2 cores (measured with --durations), longest first.
LONG_FIRST = (
    "test_end_to_end.py::test_pipeline_runs_and_second_run_does_nothing",
    "test_train.py::test_adversarial_training_with_a_consistency_loss_is_the_same_on_two_processes",
    "test_train.py::test_training_killed_mid_epoch_resumes_from_its_step_checkpoint",
    "test_train.py::test_killed_training_resumes_to_the_same_result",
    "test_store.py::test_a_checkpoint_resumes_only_the_run_of_its_training_data",
    "test_train.py::test_two_process_gloo_ddp_matches_one_process",
    "test_distributed.py::test_the_mi_stage_on_two_worker_processes_equals_the_local_run",
)


def _name(item: pytest.Item) -> str:
    """``file.py::test`` of a collected test (its node id without the folder)."""
    return item.nodeid.split("/")[-1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the long tests to the front, in :data:`LONG_FIRST` order; the rest keep theirs."""
    found = {_name(item) for item in items}
    files = {name.split("::")[0] for name in found}
    if missing := [n for n in LONG_FIRST if n.split("::")[0] in files and n not in found]:
        # its file was collected but the test was not: renamed, so it dropped out of the ordering
        warnings.warn(pytest.PytestWarning(f"tests/conftest.py: LONG_FIRST names no collected test: {missing}"),
                      stacklevel=1)
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(_name(item), len(rank)))  # stable: the others keep their order
