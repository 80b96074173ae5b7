"""The store layer: every result of the pipeline is written and read through this module.

- **Atomic writes.** :func:`atomic_store` (Zarr stores, directories) and :func:`atomic_file`
  (single files: JSON, CSV, checkpoints, HTML) write to ``<path>.partial`` and rename it to
  ``<path>`` only when complete, so a killed job never leaves something that looks like a
  result, and a rerun starts clean.
- **Integrity.** A finished store holds ``manifest.json``: the size and CRC-32 of every file
  written, the store's content digest and the digests of the inputs it was made from.
  Opening a store checks that every listed file is there with its size; every whole chunk
  read is checked against its CRC. A missing, truncated or damaged chunk is a
  :class:`StoreError` naming the store, the array and the chunk, never fill values.
- **Provenance.** :func:`digest` of a store (its manifest's content digest) or of a file
  (SHA-256 of its bytes) identifies the data a result was made from: a checkpoint resumes
  only the run whose data and spec made it.
- **Opening.** :func:`open_dataset`, :func:`open_tree` and :func:`open_group` give xarray
  and zarr views of finished stores, lazily, through the checked store; the same clear
  error for a store that is missing, unfinished, not a store or damaged.
- **Compute.** :func:`dask_scheduler` runs Dask work on the configured scheduler.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import xarray as xr
import zarr
from zarr.storage import LocalStore

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_BLOCK = 1 << 22


class StoreError(RuntimeError):
    """A result store or file is missing, unfinished, damaged or not what the reader needs."""


def partial_path(path: str | Path) -> Path:
    """Where ``path`` is built before it is complete (``<path>.partial``)."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


def _missing(path: Path, what: str) -> StoreError:
    hint = " (an unfinished .partial is there: rerun the job that makes it)" if partial_path(path).exists() else ""
    return StoreError(f"{path}: no such {what}{hint}")


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_file(path: str | Path, unique: bool = False) -> Iterator[Path]:
    """Yield a temporary file path; on success move it to ``path`` (a failure leaves ``path`` as it was).

    The temporary file is ``<path>.partial``, or with ``unique`` a name of its own
    (``<stem>.<random><suffix>.partial``), for files that concurrent processes may write at once.
    """
    final = Path(path)
    if unique:
        tmp = final.with_name(f"{final.stem}.{os.getpid()}-{os.urandom(4).hex()}{final.suffix}.partial")
    else:
        tmp = partial_path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_store(path: str | Path, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary store path; on success write its manifest and move it to ``path``.

    ``inputs`` (stores or files) are the data the store is made from: their digests go
    into the manifest. An existing ``path`` is replaced only once the new store is
    complete; a failure leaves it as it was.
    """
    final = Path(path)
    tmp = partial_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    sources = {str(p): digest(p) for p in inputs}  # before any work: a missing input fails now
    try:
        yield tmp
        write_manifest(tmp, sources)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _replace(tmp: Path, final: Path) -> None:
    """Move the finished ``tmp`` to ``final``; an old ``final`` is set aside first and removed last, so a
    failure before this point leaves the previous result in place."""
    old = final.with_name(final.name + ".old")
    _remove(old)
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(tmp, final)
    _remove(old)


def _crc_of_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def write_manifest(root: str | Path, inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """Record the size and CRC-32 of every file under ``root``, its content digest and its inputs' digests."""
    root = Path(root)
    files: dict[str, list[int]] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            key = p.relative_to(root).as_posix()
            if key != MANIFEST:
                files[key] = [p.stat().st_size, _crc_of_file(p)]
    files = dict(sorted(files.items()))
    content = hashlib.sha256(json.dumps(files, separators=(",", ":")).encode()).hexdigest()
    manifest = {"format": MANIFEST_FORMAT, "digest": content, "inputs": dict(inputs or {}), "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))
    return manifest


# --------------------------------------------------------------------------- integrity


def read_manifest(path: str | Path, what: str = "store") -> dict[str, Any]:
    """The manifest of a finished store; a :class:`StoreError` if the store is missing or has none."""
    p = Path(path)
    if not p.exists():
        raise _missing(p, what)
    try:
        manifest = json.loads((p / MANIFEST).read_text())
    except FileNotFoundError:
        raise StoreError(f"{p}: not a finished {what} (no {MANIFEST}: made by an older infodissect, or not "
                         "finished; rerun the job that makes it)") from None
    except (json.JSONDecodeError, NotADirectoryError) as exc:
        raise StoreError(f"{p}: its {MANIFEST} is unreadable ({exc}); rerun the job that makes it") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise StoreError(f"{p}: manifest format {manifest.get('format')!r}, this is {MANIFEST_FORMAT}; rerun the job")
    return manifest


def _chunk_name(key: str) -> str:
    """'image/c/3/0/0/0' -> 'array image, chunk c/3/0/0/0' (zarr v3 chunk keys, '/' or '.' separated)."""
    array, sep, chunk = key.partition("/c/")
    if sep:
        return f"array {array}, chunk c/{chunk}"
    array, _, last = key.rpartition("/")
    return f"array {array}, chunk {last}" if array and (last == "c" or last.startswith("c.")) else f"file {key}"


def _missing_chunk(root: str | Path, key: str) -> StoreError:
    return StoreError(f"{root}: {_chunk_name(key)} is missing (the store is damaged; rerun the job that makes it)")


def check_files(path: str | Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists is there with its size (cheap: no data is read)."""
    root = Path(path)
    for key, (size, _) in manifest["files"].items():
        try:
            actual = (root / key).stat().st_size
        except FileNotFoundError:
            raise _missing_chunk(root, key) from None
        if actual != size:
            raise StoreError(f"{root}: {_chunk_name(key)} is {actual} bytes, {size} when written (truncated or "
                             "damaged; rerun the job that makes it)")


def verify(path: str | Path) -> int:
    """Check every file of a store against its manifest, reading all of it; returns the bytes checked."""
    manifest = read_manifest(path)
    check_files(path, manifest)
    for key, (size, crc) in manifest["files"].items():
        if _crc_of_file(Path(path) / key) != crc:
            raise StoreError(f"{path}: {_chunk_name(key)} is damaged (CRC-32 differs from when it was written)")
    return sum(size for size, _ in manifest["files"].values())


def digest(path: str | Path) -> str:
    """The content digest of a finished store (from its manifest) or of a file (SHA-256 of its bytes)."""
    p = Path(path)
    if p.is_dir():
        return str(read_manifest(p)["digest"])
    if not p.exists():
        raise _missing(p, "file")
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


class CheckedStore(LocalStore):
    """A read-only local Zarr store whose reads are checked against the store's manifest.

    A listed file that is missing is an error (never fill values); a whole file read
    (a chunk, a metadata document) must have its recorded size and CRC-32. Partial reads
    (inner chunks of sharded arrays) rely on the size check made when the store is opened.
    """

    def __init__(self, root: str | Path, files: dict[str, list[int]] | None = None, read_only: bool = True) -> None:
        super().__init__(root, read_only=True)
        self.files = files or {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CheckedStore) and self.root == other.root

    __hash__ = LocalStore.__hash__

    def with_read_only(self, read_only: bool = False) -> CheckedStore:
        if not read_only:
            raise StoreError(f"{self.root}: a finished store is read-only")
        return self

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        return self._checked(key, await super().get(key, prototype, byte_range), byte_range)

    def get_sync(self, key: str, *, prototype: Any = None, byte_range: Any = None) -> Any:
        return self._checked(key, super().get_sync(key, prototype=prototype, byte_range=byte_range), byte_range)

    def _checked(self, key: str, buf: Any, byte_range: Any) -> Any:
        """``buf`` as read for ``key``, or a :class:`StoreError` if it is missing or damaged."""
        entry = self.files.get(key)
        if entry is None:
            return buf
        if buf is None:
            raise _missing_chunk(self.root, key)
        if byte_range is None:
            data = buf.to_bytes()
            if len(data) != entry[0] or zlib.crc32(data) != entry[1]:
                raise StoreError(f"{self.root}: {_chunk_name(key)} is damaged ({len(data)} bytes, CRC-32 differs "
                                 "from when it was written; rerun the job that makes it)")
        return buf


def checked_store(path: str | Path, what: str = "store") -> CheckedStore:
    """A finished store, its files checked against its manifest, as a read-only Zarr store."""
    manifest = read_manifest(path, what)
    check_files(path, manifest)
    return CheckedStore(Path(path), manifest["files"])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence zarr's warning that consolidated metadata is not in the v3 spec."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        yield


@contextlib.contextmanager
def _reading(path: str | Path, what: str) -> Iterator[None]:
    """Open a checked store quietly; anything but a :class:`StoreError` means it is not a readable ``what``."""
    with _quiet():
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:  # not a zarr store, or no such group
            raise StoreError(f"{path}: not a readable {what} ({exc})") from exc


# --------------------------------------------------------------------------- reading


def open_dataset(path: str | Path, require: Iterable[str] = (), what: str = "store", group: str | None = None,
                 chunks: dict[str, int] | None = None) -> xr.Dataset:
    """A finished Zarr store (or one of its groups) as a lazy Dataset, checked; ``require``: variables it must have.

    ``chunks`` (dim: size, -1 = whole) makes each Dask task read its own block from the store, where rechunking
    the store's own chunks would hold many of them at once (default: the store's chunks)."""
    store = checked_store(path, what)
    with _reading(path, what), warnings.catch_warnings():
        # Blocks that cut across the stored chunks are the point of ``chunks`` (memory per task, not reads).
        warnings.filterwarnings("ignore", message="The specified chunks separate the stored chunks")
        ds = xr.open_zarr(store, consolidated=True, group=group, **({"chunks": chunks} if chunks else {}))
    missing = [v for v in require if v not in ds.variables]
    if missing:
        raise StoreError(f"{path}: missing variable(s) {', '.join(missing)}")
    return ds


def open_tree(path: str | Path, what: str = "store") -> xr.DataTree:
    """A finished DataTree store (activations, MI, analyses) opened lazily, checked."""
    store = checked_store(path, what)
    with _reading(path, what):
        return xr.open_datatree(store, engine="zarr", consolidated=True)


def open_group(path: str | Path, what: str = "store") -> zarr.Group:
    """A finished store as a read-only zarr Group (direct array access), checked."""
    store = checked_store(path, what)
    with _reading(path, what):
        return zarr.open_group(store=store, mode="r")


def write_zarr(ds: xr.Dataset, path: str | Path, **kwargs: Any) -> None:
    """Write a Dataset as Zarr v3 with consolidated metadata (into a store being built by :func:`atomic_store`;
    ``consolidated=False`` leaves it to the caller, who writes several groups and consolidates once)."""
    kwargs.setdefault("consolidated", True)
    with _quiet():
        ds.to_zarr(path, zarr_format=3, **kwargs)


def save_dataset(ds: xr.Dataset, path: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """Write ``ds`` as the finished store ``path`` (atomically, with its manifest; ``inputs`` as in
    :func:`atomic_store`)."""
    with atomic_store(path, inputs=inputs) as tmp:
        write_zarr(ds, tmp)
    return Path(path)


def write_tree(tree: xr.DataTree, path: str | Path) -> None:
    """Write a DataTree as Zarr v3 with consolidated metadata (into a store being built by :func:`atomic_store`)."""
    with _quiet():
        # Consolidated once at the end: xarray consolidates after every node otherwise (quadratic in the nodes;
        # 10 of a dissection store's 34 s).
        tree.to_zarr(path, zarr_format=3, consolidated=False)
    consolidate(path)


def consolidate(path: str | Path) -> None:
    """Consolidate the metadata of a store written with ``consolidated=False`` (once, at the end)."""
    with _quiet():
        zarr.consolidate_metadata(str(path))


# --------------------------------------------------------------------------- compute


class SchedulerError(ValueError):
    """An unknown Dask scheduler name."""


@contextlib.contextmanager
def dask_scheduler(scheduler: str, threads: int = 1) -> Iterator[None]:
    """Run the enclosed Dask work on ``scheduler``.

    ``local`` starts an in-process distributed LocalCluster (one worker, ``threads``
    threads); ``synchronous``/``threads`` use Dask's single-machine schedulers; an address
    (``tcp://host:port``) connects to a running distributed scheduler.
    """
    import dask

    if scheduler in ("synchronous", "threads"):
        with dask.config.set(scheduler=scheduler):
            yield
        return
    from distributed import Client, LocalCluster

    if scheduler == "local":
        with LocalCluster(n_workers=1, threads_per_worker=max(1, threads), processes=False, dashboard_address=None,
                          silence_logs=logging.WARNING) as cluster, Client(cluster):
            yield
        return
    if "://" not in scheduler:
        raise SchedulerError(f"mi.scheduler {scheduler!r}: use local, synchronous, threads or tcp://host:port")
    with Client(scheduler):
        yield
