"""Batches for training from a stimulus Zarr store: whole chunks, shuffled, split across ranks.

Each epoch draws (seeded by ``seed`` and the epoch) an order of the store's chunks and
walks it in windows of ``window`` chunks: a window is read whole (chunk-aligned
reads), its samples shuffled, and cut into global batches of ``batch_size``; rank
``r`` of ``world`` takes the r-th equal slice of every global batch. The global
batches do not depend on the number of ranks, so a run on W processes sees exactly
the data of a run on one (the basis of the DDP equivalence test); memory holds one
window, never the set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..nets import network_input
from ..store import open_dataset, open_group


class DataError(ValueError):
    """A stimulus store cannot feed the requested task."""


@dataclass(frozen=True)
class Labels:
    """Class names of a task and each sample's class index."""

    task: str
    classes: tuple[str, ...]
    index: np.ndarray  # (n,) int64


def task_labels(path: str | Path, task: str, classes: tuple[str, ...] | None = None) -> Labels:
    """Class index of every sample of a store for a categorical factor ``task``.

    The classes are the factor's levels recorded in the store (identity: 0..N-1 of
    the identity pool), or ``classes`` when given (so that a test set maps to the
    training set's classes; an unknown level is an error).
    """
    group = open_group(path, "stimulus store")
    if task not in group:
        raise DataError(f"{path}: no factor {task!r} (available: {sorted(k for k in group.array_keys())})")
    factors = json.loads(group.attrs.get("factors", "{}"))
    info = factors.get(task, {})
    if info.get("kind", "categorical") != "categorical":
        raise DataError(f"{path}: factor {task!r} is {info.get('kind')}, a task needs a categorical factor")
    # Each distinct value is named once (a 26M-row design has a few thousand), then mapped to every row.
    distinct, inverse = np.unique(np.asarray(group[task][:]), return_inverse=True)
    names = [str(v) for v in distinct.tolist()]
    if classes is None:
        if task == "identity":
            classes = tuple(str(i) for i in range(int(group.attrs["identities"])))
        elif "levels" in info:
            classes = tuple(str(v) for v in info["levels"])
        else:
            classes = tuple(sorted(set(names)))
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(lookup))
    if unknown:
        raise DataError(f"{path}: {task} levels {unknown[:5]} are not among the model's classes")
    return Labels(task, tuple(classes), np.asarray([lookup[v] for v in names], dtype=np.int64)[inverse.reshape(-1)])


def chunk_ranges(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) of every chunk along samples."""
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


class StoreBatches:
    """Epochs of (images float (b, C, H, W) in [0, 1], labels (b,)) for one rank, from stored images."""

    def __init__(self, path: str | Path, labels: Labels, batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, window: int = 4, shuffle: bool = True, drop_last: bool = True) -> None:
        if batch_size % world:
            raise DataError(f"batch_size {batch_size} is not divisible by the {world} processes")
        self.group = open_group(path, "stimulus store")
        self.n, chunk = self._extent()
        self.chunks = chunk_ranges(self.n, chunk)
        self.labels, self.batch_size, self.rank, self.world = labels, batch_size, rank, world
        self.seed, self.window, self.shuffle, self.drop_last = seed, window, shuffle, drop_last

    # The array whose length and sample chunks define the source, and what to say without it.
    _index_array = "image"
    _missing = "no rendered images (is it a design table?)"

    def _extent(self) -> tuple[int, int]:
        """Number of samples and the sample chunk length of the source."""
        if self._index_array not in self.group:
            raise DataError(f"{self.group.store}: {self._missing}")
        arr = self.group[self._index_array]
        return arr.shape[0], arr.chunks[0]

    def _read(self, chunk: tuple[int, int]) -> np.ndarray:
        """One chunk's payload: its images (uint8 (k, H, W, C))."""
        return self.group["image"][slice(*chunk)]

    def _images(self, payload: np.ndarray) -> torch.Tensor:
        """A local batch's payload as float images (b, C, H, W) in [0, 1]."""
        return network_input(payload)

    def __len__(self) -> int:
        """Global batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's slice of every global batch of ``epoch`` from batch ``start`` on.

        Skipped batches are not built (not rendered), but the shuffle is the same, so
        resuming at ``start`` gives exactly the rest of the epoch.
        """
        rng = np.random.default_rng([self.seed, epoch, 0xDA7A])
        order = rng.permutation(len(self.chunks)) if self.shuffle else np.arange(len(self.chunks))
        pending_x: list[np.ndarray] = []
        pending_y: list[np.ndarray] = []
        local = self.batch_size // self.world
        lo, hi = self.rank * local, (self.rank + 1) * local
        for w in range(0, len(order), self.window):
            idx = np.concatenate([np.arange(*self.chunks[c]) for c in order[w:w + self.window]])
            x = np.concatenate([self._read(self.chunks[c]) for c in order[w:w + self.window]])
            y = self.labels.index[idx]
            perm = rng.permutation(len(idx)) if self.shuffle else np.arange(len(idx))
            pending_x.append(x[perm])
            pending_y.append(y[perm])
            bx, by = np.concatenate(pending_x), np.concatenate(pending_y)
            full = len(bx) // self.batch_size * self.batch_size
            for s in range(0, full, self.batch_size):
                if start <= 0:
                    yield self._images(bx[s + lo:s + hi]), torch.from_numpy(by[s + lo:s + hi])
                start -= 1
            pending_x, pending_y = [bx[full:]], [by[full:]]
        rest_x, rest_y = np.concatenate(pending_x), np.concatenate(pending_y)
        if len(rest_x) and not self.drop_last:
            k = -(-len(rest_x) // self.world)
            yield self._images(rest_x[self.rank * k:(self.rank + 1) * k]), torch.from_numpy(
                rest_y[self.rank * k:(self.rank + 1) * k])


class RenderedBatches(StoreBatches):
    """The same epochs, rendered on the fly from a design table (factor rows) on ``device``.

    The global batches are those a stored copy of the set would give; each rank
    renders its slice with the stimulus renderer (:func:`infodissect.faces.render`)
    in fixed-size batches, so no image touches disk.
    """

    def __init__(self, design: str | Path, labels: Labels, batch_size: int, render_spec: dict, rank: int = 0,
                 world: int = 1, seed: int = 0, window: int = 4, device: str | torch.device = "cpu") -> None:
        super().__init__(design, labels, batch_size, rank, world, seed, window)
        from ..faces.model import model_from_config
        from ..stimuli.store import camera_from_config

        self.device = torch.device(device)
        self.face_model = model_from_config(render_spec["generator"], device=self.device)
        self.camera = camera_from_config(render_spec["render"])
        from ..stimuli.design import ROW_CODES, TABLE_CODES, person_rows

        design_ds = open_dataset(design, what="design table")
        # Codes of their own per row (morph, revcorr designs) travel with the rows; otherwise each row carries
        # its person's row of the identity table, held once on the device (and not read again per chunk).
        self.row_codes = all(k in design_ds.variables for k in ROW_CODES)
        self.tables = None if self.row_codes else tuple(
            torch.as_tensor(design_ds[k].values, dtype=torch.float32, device=self.device) for k in TABLE_CODES)
        person_rows(design_ds.isel(sample=slice(0, 1)))  # a table without the person of row 0 stops here
        self.person = np.asarray(design_ds["person"].values)
        self.design = design_ds if self.row_codes else design_ds.drop_vars(list(TABLE_CODES))

    _index_array = "identity"
    _missing = "not a design table (no identity)"

    def _read(self, chunk: tuple[int, int]) -> np.ndarray:
        """One chunk's payload: its rows' renderer parameters, packed as a float64 matrix (k, D).

        Reading whole chunks of the table (not a row selection per batch) keeps the
        reads chunk-aligned; the rows are unpacked per local batch in :meth:`_images`.
        """
        from ..stimuli.design import table_rows
        from ..stimuli.store import design_params, factor_params

        rows = self.design.isel(sample=slice(*chunk)).load()
        if self.row_codes:
            params = design_params(rows)
        else:
            person = table_rows(self.person, np.asarray(rows["identity"].values))
            params = factor_params(rows) | {"person": torch.as_tensor(person, dtype=torch.long)}
        self._layout = [(k, tuple(v.shape[1:]), v.dtype) for k, v in params.items()]
        return np.concatenate([v.reshape(len(v), -1).to(torch.float64).numpy() for v in params.values()], 1)

    def _images(self, payload: np.ndarray) -> torch.Tensor:
        from ..faces.render import render

        cols = torch.from_numpy(payload).to(self.device)
        params, at = {}, 0
        for name, shape, dtype in self._layout:
            width = int(np.prod(shape)) if shape else 1
            params[name] = cols[:, at:at + width].reshape((len(cols),) + shape).to(dtype)
            at += width
        if self.tables is not None:
            person = params.pop("person")
            params["shape_coeff"], params["texture_coeff"] = (t[person] for t in self.tables)
        with torch.inference_mode():
            img, _ = render(self.face_model, params, self.camera)
        return network_input(img)
