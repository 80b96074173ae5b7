"""Fault injection for tests: kill a process at a named point, as an OOM kill or a lost node would.

A job run with ``INFODISSECT_FAULT=<point>:<n>`` in its environment exits with status
137 (SIGKILL's) when it passes point ``<point>`` for the ``n``-th time, without cleaning
up, so tests can check that a rerun resumes or restarts cleanly. Points:

- ``epoch``: training finished epoch ``n`` (and wrote its checkpoint);
- ``step``: training passed global step ``n`` with a step checkpoint written.

Unset (always, outside tests), :func:`checkpoint` does nothing.
"""

from __future__ import annotations

import os

ENV = "INFODISSECT_FAULT"
POINTS = ("epoch", "step")


def checkpoint(point: str, count: int) -> None:
    """Exit with status 137 if the environment asks for a fault at ``point`` number ``count``."""
    if point not in POINTS:
        raise ValueError(f"fault point {point!r}: use one of {POINTS}")
    if os.environ.get(ENV) == f"{point}:{count}":
        os._exit(137)
