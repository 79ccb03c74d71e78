"""Build-once, read-many on-disk cache of dataset arrays (.npy, memory-mapped).

Many worker processes may ask for the same dataset at the same time: the first
builds it under an exclusive file lock and publishes it with an atomic rename,
so no reader ever sees a half-written cache.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from data_partition.modality_data import DatasetSplits, ModalityData

_DONE = "meta.json"


@contextmanager
def _exclusive(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write(splits: DatasetSplits, folder: Path) -> None:
    meta = {"name": splits.name, "modality": splits.train.modality, "classes": list(splits.train.classes)}
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
            _write(build(staging), staging)
            for scratch in staging.iterdir():
                if scratch.name != _DONE and not scratch.name.endswith(".npy"):
                    scratch.unlink()
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _read(folder)
