"""Build-once, read-many on-disk cache of dataset arrays (.npy, memory-mapped).

Many worker processes may ask for the same dataset at the same time: the first
builds it under an exclusive file lock in a private staging folder and
publishes it with an atomic rename, so no reader ever sees a half-written
cache. Crash safety:

* **Durable before visible.** Every ``.npy`` and ``meta.json`` (written last)
  is flushed and ``fsync``-ed, then the staging folder, before the rename; the
  parent folder is ``fsync``-ed after it. A crash leaves either no cache or a
  complete one.
* **Complete means complete.** A cache counts as ready only when its
  ``meta.json`` parses and every ``.npy`` is exactly its header plus
  ``shape x itemsize`` bytes (:func:`cache_ready`); an incomplete folder (a
  crash under an older build, a damaged disk) is moved aside and rebuilt.
* **A published cache is never deleted.** A builder that finds a complete cache
  already in place -- e.g. a second builder on a file system whose lock does
  not exclude (some network file systems) -- keeps it and discards its own
  staging folder; readers of the published cache are never pulled from under.
* **No leftovers.** Each staging folder records its owner (host and pid); a
  builder removes the staging folders of owners that died on this host (a
  build killed mid-way, even by SIGKILL) and those older than
  ``STALE_SECONDS`` from other hosts, and incomplete caches it moved aside.

A build may leave a ``summary.json`` (e.g. counts of files it skipped) in its
scratch folder: it is stored under ``"summary"`` in the cache's ``meta.json``,
logged in one line, and read back with :func:`cache_summary`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from data_partition.modality_data import DatasetSplits, ModalityData
from file_io.atomic import fsync_dir, synced_write

_DONE = "meta.json"
_SUMMARY = "summary.json"
_OWNER = ".owner.json"
_SPLITS = ("train", "test")
STALE_SECONDS = 24 * 3600  # staging folders of other hosts older than this are removed
log = logging.getLogger(__name__)


@contextmanager
def _exclusive(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save(path: Path, array: np.ndarray) -> None:
    synced_write(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))


def _write(splits: DatasetSplits, folder: Path, summary: dict | None = None) -> None:
    """The arrays, then ``meta.json``, each fsync-ed."""
    meta: dict[str, object] = {"name": splits.name, "modality": splits.train.modality,
                               "classes": list(splits.train.classes)}
    if summary is not None:
        meta["summary"] = summary
    for split, data in (("train", splits.train), ("test", splits.test)):
        _save(folder / f"{split}_x.npy", data.x)
        _save(folder / f"{split}_y.npy", data.y)
    synced_write(folder / _DONE, lambda fh: fh.write(json.dumps(meta).encode()))


def _npy_complete(path: Path) -> bool:
    """``path`` is exactly one npy header plus ``shape x itemsize`` bytes."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            shape, _, dtype = reader[version](fh)
            expected = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return os.stat(path).st_size == expected and not dtype.hasobject
    except (OSError, ValueError, KeyError, SyntaxError):
        return False


def cache_ready(folder: Path) -> bool:
    """A complete, published cache: ``meta.json`` readable and every array file whole."""
    folder = Path(folder)
    try:
        json.loads((folder / _DONE).read_text())
    except (OSError, ValueError):
        return False
    return all(_npy_complete(folder / f"{split}_{part}.npy") for split in _SPLITS for part in ("x", "y"))


def _read(folder: Path) -> DatasetSplits:
    meta = json.loads((folder / _DONE).read_text())
    parts = {
        split: ModalityData(
            meta["modality"],
            np.load(folder / f"{split}_x.npy", mmap_mode="r"),
            np.load(folder / f"{split}_y.npy"),
            tuple(meta["classes"]),
        )
        for split in _SPLITS
    }
    return DatasetSplits(meta["name"], parts["train"], parts["test"])


def _take_summary(scratch: Path) -> dict | None:
    path = scratch / _SUMMARY
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    path.unlink()
    return summary


def _log_summary(name: str, summary: dict | None) -> None:
    if not summary:
        return
    kept = ", ".join(f"{split} {n}" for split, n in summary.get("kept", {}).items())
    skipped = summary.get("skipped", {})
    line = f"{name}: cached {kept}; skipped {summary.get('skipped-total', 0)} files"
    if skipped:
        line += " (" + ", ".join(f"{n} {reason}" for reason, n in skipped.items()) + ")"
    (log.warning if skipped else log.info)(line)


def cache_summary(folder: Path) -> dict:
    """The build's summary stored in ``meta.json`` ({} when none was left)."""
    return json.loads((Path(folder) / _DONE).read_text()).get("summary", {})


# --------------------------------------------------------------------------- staging folders
def _staging_prefix(name: str) -> str:
    return f".{name}-build-"


def _aside_prefix(name: str) -> str:
    return f".{name}-incomplete-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale(staging: Path) -> bool:
    """Whether nobody is building in ``staging`` any more."""
    try:
        owner = json.loads((staging / _OWNER).read_text())
        host, pid = str(owner["host"]), int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        host, pid = None, None
    if host == socket.gethostname() and pid is not None:
        return not _alive(pid)
    try:
        return time.time() - staging.stat().st_mtime > STALE_SECONDS
    except OSError:
        return False


def sweep_stale(parent: Path, name: str) -> list[Path]:
    """Remove staging folders of dead builders of ``name`` and incomplete caches moved aside; return them."""
    removed = []
    for path in sorted(Path(parent).glob(f".{name}-*")):
        if not path.is_dir():
            continue
        if path.name.startswith(_aside_prefix(name)) or (path.name.startswith(_staging_prefix(name)) and _stale(path)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("%s: removed %d stale build folder(s)", name, len(removed))
    return removed


def _new_staging(parent: Path, name: str) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(name), dir=parent))
    os.chmod(staging, 0o755)
    (staging / _OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return staging


def _move_aside(folder: Path) -> None:
    """Take an incomplete cache folder off its path in one rename, then remove it."""
    aside = Path(tempfile.mkdtemp(prefix=_aside_prefix(folder.name), dir=folder.parent))
    os.replace(folder, aside / folder.name)
    log.warning("%s: incomplete cache (a crash during an earlier build?) is rebuilt", folder.name)
    shutil.rmtree(aside, ignore_errors=True)


def cached_splits(folder: Path, build: Callable[[Path], DatasetSplits]) -> DatasetSplits:
    """Return the cached splits in ``folder``, building them first if absent.

    ``build`` receives a private scratch directory it may use for temporary files.
    """
    folder = Path(folder)
    if cache_ready(folder):
        return _read(folder)
    with _exclusive(folder.parent / f".{folder.name}.lock"):
        if cache_ready(folder):
            return _read(folder)
        sweep_stale(folder.parent, folder.name)
        if folder.exists():
            _move_aside(folder)
        staging = _new_staging(folder.parent, folder.name)
        log.info("%s: building the array cache in %s (once; later runs read it)", folder.name, folder)
        try:
            splits = build(staging)
            summary = _take_summary(staging)
            _write(splits, staging, summary)
            _log_summary(folder.name, summary)
            for scratch in staging.iterdir():
                if scratch.name != _DONE and not scratch.name.endswith(".npy"):
                    if scratch.is_dir():
                        shutil.rmtree(scratch)
                    else:
                        scratch.unlink()
            fsync_dir(staging)
            try:
                os.rename(staging, folder)  # fails if a complete cache appeared meanwhile: that one is kept
            except OSError:
                if not cache_ready(folder):
                    raise
                log.info("%s: another builder published the cache first; keeping it", folder.name)
            fsync_dir(folder.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _read(folder)
