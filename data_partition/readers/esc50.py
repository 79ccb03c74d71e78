"""ESC-50 (2,000 environmental sounds, 50 classes, 5 s clips at 44.1 kHz, 5 folds).

Layout (the GitHub archive, extracted as ``ESC-50-master`` or renamed ``esc50``)::

    ESC-50-master/audio/{fold}-{src}-{take}-{target}.wav
    ESC-50-master/meta/esc50.csv     header: filename,fold,target,category,esc10,src_file,take

Folds 1-4 -> train split, fold 5 -> test split (:data:`TEST_FOLDS`). Clips are
resampled to 16 kHz mono and cut or zero-padded to :data:`CLIP_SECONDS`.
Unreadable WAVs and listed-but-missing files are skipped and counted.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from data_partition.modality_data import AUDIO, DatasetSplits, ModalityData
from data_partition.readers.common import (
    SAMPLE_RATE,
    LayoutError,
    Skips,
    class_id,
    dataset_folder,
    decode_into,
    inside,
    load_wav,
    read_csv_rows,
    require_samples,
)

FOLDERS = ("ESC-50-master", "esc50")
CLIP_SECONDS = 5.0
TEST_FOLDS = frozenset({5})
_EXPECTED = "ESC-50-master/{audio/*.wav,meta/esc50.csv} (or esc50/...)"
_HOW = "download the ESC-50 GitHub archive (master.zip) and extract it there"
_COLUMNS = ("filename", "fold", "target", "category")


def check_layout(data_root: Path) -> Path:
    return dataset_folder(data_root, FOLDERS, ("audio", "meta/esc50.csv"), _EXPECTED, _HOW)


def read_meta(csv_path: Path) -> list[dict[str, str]]:
    rows = read_csv_rows(csv_path, csv.DictReader)
    if rows and not all(c in rows[0] for c in _COLUMNS):
        raise LayoutError(f"{csv_path}: expected the columns {','.join(_COLUMNS)},esc10,src_file,take")
    return rows


def build(data_root: Path, scratch: Path, clip_seconds: float = CLIP_SECONDS) -> DatasetSplits:
    folder = check_layout(data_root)
    skips = Skips()
    rows = []
    for row in read_meta(folder / "meta" / "esc50.csv"):
        try:
            rows.append((row["filename"], int(row["fold"]), class_id(row["target"]), row["category"]))
        except (TypeError, ValueError):
            skips.add("bad-csv-row", str(row)[:120])
    names: dict[int, str] = {}
    for _, _, target, category in rows:
        names.setdefault(target, category)
    classes = tuple(names.get(t, str(t)) for t in range(max(names, default=-1) + 1))

    items: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for filename, fold, target, _ in rows:
        if (path := inside(folder / "audio", filename)) is None:
            skips.add("outside-dataset", filename[:120])
            continue
        items["test" if fold in TEST_FOLDS else "train"].append((path, target))
    clip = int(round(clip_seconds * SAMPLE_RATE))
    decode = partial(load_wav, clip_samples=clip)
    parts = {}
    for split in ("train", "test"):
        x, y = decode_into(scratch, f"{split}_x", items[split], decode, (clip,), np.int16, skips)
        require_samples("esc50", split, len(y), skips)
        parts[split] = ModalityData(AUDIO, x, y, classes)
    skips.write(scratch, {split: len(part) for split, part in parts.items()})
    return DatasetSplits("esc50", parts["train"], parts["test"])
