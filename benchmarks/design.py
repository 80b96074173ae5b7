"""Build the paper-scale training design and print its time, peak memory and size on disk (issue 18).

    python benchmarks/design.py [--configfile config/paper.yaml] [--set train] [--keep PATH]

Draws set ``--set`` of the config (config/paper.yaml: 2,000 identities x 13,000 images, 26M rows)
with the stimulus stage's own writer (:func:`infodissect.stimuli.design.write_design`, block by block)
into a temporary folder, or into ``--keep`` to feed ``benchmarks/train.py --design``, and prints
each figure beside its target: built in under 10 minutes on a 2-core machine, peak memory (this
process's maximum resident set, imports included) under 2 GB, the table under 2 GB on disk. The
stored table is then read back whole (every factor column and the identity table) and checked
against the config: its size, its identity table, and that each block of rows covers every person.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from infodissect.config import load_config
from infodissect.stimuli.design import DRAW_BLOCK, design_size, write_design
from infodissect.stimuli.store import open_stimuli

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9


def stage_spec(config: dict, name: str) -> dict:
    """The design stage's spec of set ``name`` (as workflow/rules/common.smk builds it)."""
    st = config["stimuli"]
    return {"seed": config["seed"], "identities": st["identities"], "heldout_identities": st["heldout_identities"],
            "generator": st["generator"], "factors": st["factors"], "set": st["sets"][name], "name": name}


def disk_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def peak_rss() -> float:
    """This process's peak resident memory, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/paper.yaml")
    ap.add_argument("--set", default="train")
    ap.add_argument("--keep", help="write the design here (and keep it) instead of a temporary folder")
    a = ap.parse_args()
    config = load_config(ROOT / a.configfile)
    spec = stage_spec(config, a.set)
    n = design_size(spec["set"], config["stimuli"])
    where = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="design-")) / f"{a.set}.zarr"
    print(f"{a.configfile} set {a.set}: {n:,} rows ({spec['set']['design']}, {config['stimuli']['identities']:,} "
          f"identities), blocks of {DRAW_BLOCK:,} rows, {os.cpu_count()} CPUs; writing {where}", flush=True)
    t0 = time.perf_counter()
    write_design(a.set, spec, where)
    seconds = time.perf_counter() - t0
    size = disk_bytes(where)
    t1 = time.perf_counter()
    ds = open_stimuli(where)
    identity = ds["identity"].values
    yaw = ds["yaw"].values
    read = time.perf_counter() - t1
    n_id = ds.sizes["person"]
    ok = (len(identity) == n and ds["identity_shape"].shape == (n_id, int(config["stimuli"]["generator"]
                                                                         ["shape_components"]))
          and yaw.dtype == np.float32 and "shape_coeff" not in ds
          and all(len(np.unique(identity[lo:lo + DRAW_BLOCK])) == min(n_id, len(identity[lo:lo + DRAW_BLOCK]))
                  for lo in range(0, n, DRAW_BLOCK)))
    memory = peak_rss()
    rows = [("build", f"{seconds:8.1f} s", "< 600 s", seconds < 600),
            ("table on disk", f"{size / GB:8.2f} GB", "< 2 GB", size < 2 * GB),
            ("peak memory (build and read)", f"{memory / GB:8.2f} GB", "< 2 GB", memory < 2 * GB),
            ("read back (identity, yaw)", f"{read:8.1f} s", "", True),
            ("contents", "ok" if ok else "WRONG", "size, identity table, blocks cover every person", ok)]
    for what, value, target, passed in rows:
        print(f"{what:30s} {value}   {target:>10s}  {'' if passed else 'FAILED'}", flush=True)
    print(json.dumps({"rows": n, "seconds": seconds, "bytes": size, "peak_rss": memory, "read_seconds": read}))
    if not a.keep:
        shutil.rmtree(where.parent, ignore_errors=True)
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
