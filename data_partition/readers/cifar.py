"""CIFAR-10 and CIFAR-100 from the "python version" pickles.

Layout (as extracted from the official archives):
``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python/{train, test, meta}``. Each batch is a pickled dict whose
``data`` rows are 3,072 uint8 values (the R, G and B planes of a 32x32 image).

The pickles are read with a restricted unpickler that only rebuilds plain
containers and numpy arrays, so a hostile file cannot run code. An unreadable
batch is skipped and counted; the other batches are still used.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_partition.modality_data import IMAGE, DatasetSplits, ModalityData
from data_partition.readers.common import Skips, dataset_folder, require_samples

IMAGE_SIDE = 32
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
}


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    how: str

    @property
    def expected(self) -> str:
        files = ",".join((*self.train_files, self.test_file, self.meta_file))
        if len(self.train_files) == 5:
            files = f"data_batch_1..5,{self.test_file},{self.meta_file}"
        return f"{self.folder}/{{{files}}}"


CIFAR10 = CifarLayout(
    "cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    "labels", "label_names", "download CIFAR-10 (python version, cifar-10-python.tar.gz) and extract it there",
)
CIFAR100 = CifarLayout(
    "cifar100", "cifar-100-python", ("train",), "test", "meta",
    "fine_labels", "fine_label_names", "download CIFAR-100 (python version, cifar-100-python.tar.gz) and extract it there",
)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = module.replace("numpy.core.", "numpy._core.")  # pickles written before numpy 2
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR pickle")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """A CIFAR pickle as a dict with str keys (the files are Python 2 pickles: latin1)."""
    with open(path, "rb") as fh:
        raw = _SafeUnpickler(fh, encoding="latin1").load()
    if not isinstance(raw, dict):
        raise ValueError(f"expected a dict, got {type(raw).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def rows_to_images(rows) -> np.ndarray:
    """``(N, 3072)`` rows (R, G, B planes) -> uint8 ``(N, 32, 32, 3)``."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
        raise ValueError(f"expected (N, 3072) rows, got shape {rows.shape}")
    return np.ascontiguousarray(rows.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    if images.shape[1] == side:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR))
                     for img in images])


def check_layout(layout: CifarLayout, data_root: Path) -> Path:
    return dataset_folder(data_root, (layout.folder,), (*layout.train_files, layout.test_file, layout.meta_file),
                          layout.expected, layout.how)


def _read_batches(folder: Path, files: tuple[str, ...], label_key: str, num_classes: int,
                  skips: Skips) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        try:
            batch = read_pickle(folder / name)
            x = rows_to_images(batch["data"])
            y = np.asarray(batch[label_key], np.int64)
            if len(y) != len(x) or (len(y) and (y.min() < 0 or y.max() >= num_classes)):
                raise ValueError(f"{len(x)} rows but {len(y)} labels in range {y.min(initial=0)}..{y.max(initial=0)}")
        except FileNotFoundError:
            skips.add("missing", folder / name)
            continue
        except Exception as err:  # noqa: BLE001 - any damage to a batch means "unreadable"
            skips.add("unreadable", folder / name, err)
            continue
        images.append(x)
        labels.append(y)
    if not images:
        return np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


def build_layout(layout: CifarLayout, data_root: Path, scratch: Path, side: int = IMAGE_SIDE) -> DatasetSplits:
    folder = check_layout(layout, data_root)
    meta = read_pickle(folder / layout.meta_file)  # without class names nothing can be labelled: let it raise
    classes = tuple(str(c) for c in meta[layout.names_key])
    skips = Skips()
    parts = {}
    for split, files in (("train", layout.train_files), ("test", (layout.test_file,))):
        x, y = _read_batches(folder, files, layout.label_key, len(classes), skips)
        require_samples(layout.name, split, len(y), skips)
        parts[split] = ModalityData(IMAGE, _resize(x, side), y, classes)
    skips.write(scratch, {split: len(part) for split, part in parts.items()})
    return DatasetSplits(layout.name, parts["train"], parts["test"])


def build_cifar10(data_root: Path, scratch: Path) -> DatasetSplits:
    return build_layout(CIFAR10, data_root, scratch)


def build_cifar100(data_root: Path, scratch: Path) -> DatasetSplits:
    return build_layout(CIFAR100, data_root, scratch)


def check_cifar10(data_root: Path) -> None:
    check_layout(CIFAR10, data_root)


def check_cifar100(data_root: Path) -> None:
    check_layout(CIFAR100, data_root)
