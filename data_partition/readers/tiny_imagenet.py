"""Tiny ImageNet (200 classes, 64x64 JPEGs).

Layout (as extracted from ``tiny-imagenet-200.zip``)::

    tiny-imagenet-200/wnids.txt                      one WordNet id per line = the classes
    tiny-imagenet-200/words.txt                      optional: "<wnid>\\t<names>" (class names)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG     training images
    tiny-imagenet-200/val/images/*.JPEG              held-out images ...
    tiny-imagenet-200/val/val_annotations.txt        ... labelled by "<file>\\t<wnid>\\t<box>"

Train -> train split, val -> test split (the official test set has no labels).
Unreadable or truncated JPEGs and listed-but-missing files are skipped and counted.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from data_partition.modality_data import IMAGE, DatasetSplits, ModalityData
from data_partition.readers.common import (
    Skips,
    dataset_folder,
    decode_into,
    existing_files,
    inside,
    load_image,
    read_lines,
    require_samples,
)

FOLDER = "tiny-imagenet-200"
IMAGE_SIDE = 64
_SUFFIXES = (".jpeg", ".jpg", ".png")
_EXPECTED = f"{FOLDER}/{{wnids.txt,train/<wnid>/images/*.JPEG,val/images/*.JPEG,val/val_annotations.txt}}"
_HOW = "download tiny-imagenet-200.zip and extract it there"


def check_layout(data_root: Path) -> Path:
    return dataset_folder(data_root, (FOLDER,), ("wnids.txt", "train", "val/images", "val/val_annotations.txt"),
                          _EXPECTED, _HOW)


def class_names(folder: Path, wnids: list[str]) -> tuple[str, ...]:
    """Readable names from words.txt (first synonym) where present and unique, else the wnid."""
    words = {}
    if (folder / "words.txt").exists():
        for line in read_lines(folder / "words.txt"):
            wnid, _, synonyms = line.partition("\t")
            words[wnid] = synonyms.split(",")[0].strip()
    names = [words.get(w) or w for w in wnids]
    return tuple(n if names.count(n) == 1 else f"{n} ({w})" for n, w in zip(names, wnids))


def build(data_root: Path, scratch: Path, side: int = IMAGE_SIDE) -> DatasetSplits:
    folder = check_layout(data_root)
    wnids = read_lines(folder / "wnids.txt")
    index = {w: i for i, w in enumerate(wnids)}
    skips = Skips()
    train_items: list[tuple[Path, int]] = []
    for wnid in wnids:
        class_dir = folder / "train" / wnid / "images"
        if not class_dir.is_dir():
            skips.add("missing-class-folder", class_dir)
        train_items += [(p, index[wnid]) for p in existing_files(class_dir, _SUFFIXES)]
    test_items: list[tuple[Path, int]] = []
    for line in read_lines(folder / "val" / "val_annotations.txt"):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            skips.add("unknown-label", line[:120])
            continue
        if (path := inside(folder / "val" / "images", fields[0])) is None:
            skips.add("outside-dataset", fields[0][:120])
            continue
        test_items.append((path, index[fields[1]]))

    decode = partial(load_image, side=side)
    classes = class_names(folder, wnids)
    parts = {}
    for split, items in (("train", train_items), ("test", test_items)):
        x, y = decode_into(scratch, f"{split}_x", items, decode, (side, side, 3), np.uint8, skips)
        require_samples("tiny-imagenet", split, len(y), skips)
        parts[split] = ModalityData(IMAGE, x, y, classes)
    skips.write(scratch, {split: len(part) for split, part in parts.items()})
    return DatasetSplits("tiny-imagenet", parts["train"], parts["test"])
