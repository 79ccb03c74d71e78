"""Build-once, read-many on-disk cache of dataset arrays (.npy, memory-mapped).

Many worker processes may ask for the same dataset at the same time: the first
builds it under an exclusive file lock and publishes it with an atomic rename,
so no reader ever sees a half-written cache.

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
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from data_partition.modality_data import DatasetSplits, ModalityData

_DONE = "meta.json"
_SUMMARY = "summary.json"
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


def _write(splits: DatasetSplits, folder: Path, summary: dict | None = None) -> None:
    meta = {"name": splits.name, "modality": splits.train.modality, "classes": list(splits.train.classes)}
    if summary is not None:
        meta["summary"] = summary
    for split, data in (("train", splits.train), ("test", splits.test)):
        np.save(folder / f"{split}_x.npy", data.x)
        np.save(folder / f"{split}_y.npy", data.y)
    (folder / _DONE).write_text(json.dumps(meta))


def _read(folder: Path) -> DatasetSplits:
    meta = json.loads((folder / _DONE).read_text())
    parts = {
        split: ModalityData(
            meta["modality"],
            np.load(folder / f"{split}_x.npy", mmap_mode="r"),
            np.load(folder / f"{split}_y.npy"),
            tuple(meta["classes"]),
        )
        for split in ("train", "test")
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


def cache_ready(folder: Path) -> bool:
    return (Path(folder) / _DONE).exists()


def cache_summary(folder: Path) -> dict:
    """The build's summary stored in ``meta.json`` ({} when none was left)."""
    return json.loads((Path(folder) / _DONE).read_text()).get("summary", {})


def cached_splits(folder: Path, build: Callable[[Path], DatasetSplits]) -> DatasetSplits:
    """Return the cached splits in ``folder``, building them first if absent.

    ``build`` receives a private scratch directory it may use for temporary files.
    """
    folder = Path(folder)
    if (folder / _DONE).exists():
        return _read(folder)
    with _exclusive(folder.parent / f".{folder.name}.lock"):
        if (folder / _DONE).exists():
            return _read(folder)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        os.chmod(staging, 0o755)
        try:
            splits = build(staging)
            summary = _take_summary(staging)
            _write(splits, staging, summary)
            _log_summary(folder.name, summary)
            for scratch in staging.iterdir():
                if scratch.name != _DONE and not scratch.name.endswith(".npy"):
                    scratch.unlink()
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _read(folder)
