"""What the store layer's integrity costs: manifest writing and checked reads against plain zarr reads.

    python benchmarks/store.py [--mb 256] [--repeats 3]

Writes a float32 (sample, unit) store of about ``--mb`` MB in 4 MB chunks (zstd-compressed
and uncompressed, as stimulus and activation stores are), then prints, per layout: the
write time of the data, of its manifest (size and CRC-32 of every file), a full read
through ``xr.open_zarr`` (plain) and through ``infodissect.store.open_dataset`` (every chunk
CRC-checked), and ``verify`` (read and check every byte). Anchor: the plain read, in the
same run (medians of ``--repeats``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from timing import median_time

from infodissect.store import atomic_store, open_dataset, verify, write_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    units = 1024
    n = int(a.mb * 2**20 / (units * 4))
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((n, units), dtype=np.float32), 0)  # ReLU-like: compressible
    ds = xr.Dataset({"activation": (("sample", "unit"), x)}).chunk({"sample": 1024})
    root = Path(tempfile.mkdtemp())
    print(f"{a.mb:.0f} MB float32 ({n} x {units}), 4 MB chunks; seconds (median of {a.repeats})")
    print(f"{'layout':<14}{'write':>8}{'manifest':>10}{'plain read':>12}{'checked read':>14}{'verify':>8}"
          f"{'checked / plain':>17}")
    for name, enc in (("zstd", {}), ("uncompressed", {"compressors": None})):
        path = root / f"{name}.zarr"
        t0 = time.perf_counter()
        with atomic_store(path) as tmp:
            ds.to_zarr(tmp, zarr_format=3, consolidated=True, encoding={"activation": enc})
            t_write = time.perf_counter() - t0
        t_manifest = median_time(lambda: write_manifest(path), a.repeats)
        plain = median_time(lambda: xr.open_zarr(path, consolidated=True)["activation"].values, a.repeats)
        checked = median_time(lambda: open_dataset(path)["activation"].values, a.repeats)
        t_verify = median_time(lambda: verify(path), a.repeats)
        print(f"{name:<14}{t_write:>8.2f}{t_manifest:>10.2f}{plain:>12.2f}{checked:>14.2f}{t_verify:>8.2f}"
              f"{checked / plain:>16.2f}x")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
