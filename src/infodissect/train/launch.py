"""The torchrun command of a training job: one machine (``--standalone``) or several nodes.

On one node torchrun runs standalone. Across N nodes one launcher runs per node (under
SLURM: ``srun --ntasks-per-node=1``, which the rule adds) and every launcher's torchrun
joins the same c10d rendezvous: the endpoint is ``INFODISSECT_RDZV_ENDPOINT``
(``host:port``), else the first host of the SLURM allocation at ``port``; the
rendezvous id is the SLURM job id (or ``INFODISSECT_RDZV_ID``). Node ranks are
assigned by the rendezvous, so the launchers need no rank of their own.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Mapping


class LaunchError(ValueError):
    """The environment does not say how the nodes of a training job meet."""


def expand_hostlist(spec: str) -> list[str]:
    """SLURM host list (``gpu[01-03,07],login1``) to host names, in order."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", spec):
        m = re.fullmatch(r"(.*?)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            hi = hi or lo
            hosts += [f"{prefix}{i:0{len(lo)}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
    return hosts


def _first_host(nodelist: str) -> str:
    """First host of a SLURM node list (``scontrol show hostnames`` when available)."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    return expand_hostlist(nodelist)[0]


def torchrun_args(nodes: int, nproc_per_node: int, env: Mapping[str, str], port: int = 29500) -> list[str]:
    """torchrun's options for ``nodes`` nodes of ``nproc_per_node`` processes each."""
    if nodes < 1 or nproc_per_node < 1:
        raise LaunchError(f"a training job needs at least 1 node and 1 process per node "
                          f"(got {nodes}, {nproc_per_node})")
    if nodes == 1:
        return ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc_per_node)]
    endpoint = env.get("INFODISSECT_RDZV_ENDPOINT")
    if not endpoint:
        if not env.get("SLURM_JOB_NODELIST"):
            raise LaunchError(f"training.nodes is {nodes}, but neither SLURM_JOB_NODELIST (a SLURM allocation: run "
                              "with --workflow-profile workflow/profiles/slurm) nor INFODISSECT_RDZV_ENDPOINT "
                              "(host:port) says where the nodes meet")
        endpoint = f"{_first_host(env['SLURM_JOB_NODELIST'])}:{port}"
    rdzv_id = env.get("INFODISSECT_RDZV_ID") or env.get("SLURM_JOB_ID") or "infodissect"
    return ["--nnodes", str(nodes), "--nproc-per-node", str(nproc_per_node), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id]
