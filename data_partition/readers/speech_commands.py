"""Speech Commands v2 (35 words, 1 s clips at 16 kHz).

Layout (as extracted from ``speech_commands_v0.02.tar.gz``)::

    speech_commands_v0.02/<word>/<speaker>_nohash_<n>.wav
    speech_commands_v0.02/validation_list.txt      "<word>/<file>.wav" per line
    speech_commands_v0.02/testing_list.txt         "<word>/<file>.wav" per line
    speech_commands_v0.02/_background_noise_/      long noise recordings, not a class

Classes are the word folders (sorted). Test split = ``testing_list.txt``; train
split = every clip in neither list (the validation clips are left out, as in the
official protocol). Clips are cut or zero-padded to :data:`CLIP_SECONDS`.
Unreadable WAVs and listed-but-missing files are skipped and counted.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from data_partition.modality_data import AUDIO, DatasetSplits, ModalityData
from data_partition.readers.common import (
    SAMPLE_RATE,
    Skips,
    dataset_folder,
    decode_into,
    existing_files,
    inside,
    load_wav,
    read_lines,
    require_samples,
)

FOLDER = "speech_commands_v0.02"
CLIP_SECONDS = 1.0
_EXPECTED = f"{FOLDER}/{{<word>/*.wav,validation_list.txt,testing_list.txt}}"
_HOW = "download speech_commands_v0.02.tar.gz and extract it into that folder"


def check_layout(data_root: Path) -> Path:
    return dataset_folder(data_root, (FOLDER,), ("validation_list.txt", "testing_list.txt"), _EXPECTED, _HOW)


def word_folders(folder: Path) -> list[str]:
    """Class folders: every sub-folder except ``_background_noise_`` and other ``_``/``.`` names."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def build(data_root: Path, scratch: Path, clip_seconds: float = CLIP_SECONDS) -> DatasetSplits:
    folder = check_layout(data_root)
    words = word_folders(folder)
    index = {w: i for i, w in enumerate(words)}
    skips = Skips()
    held_out = {line.replace("\\", "/") for line in read_lines(folder / "validation_list.txt")}
    test_items: list[tuple[Path, int]] = []
    for rel in read_lines(folder / "testing_list.txt"):
        rel = rel.replace("\\", "/")
        held_out.add(rel)
        word = rel.split("/")[0]
        if word not in index:
            skips.add("unknown-label", rel)
            continue
        if (path := inside(folder, rel)) is None:
            skips.add("outside-dataset", rel[:120])
            continue
        test_items.append((path, index[word]))
    train_items = [
        (path, index[word])
        for word in words for path in existing_files(folder / word, (".wav",))
        if f"{word}/{path.name}" not in held_out
    ]

    clip = int(round(clip_seconds * SAMPLE_RATE))
    decode = partial(load_wav, clip_samples=clip)
    parts = {}
    for split, items in (("train", train_items), ("test", test_items)):
        x, y = decode_into(scratch, f"{split}_x", items, decode, (clip,), np.int16, skips)
        require_samples("speech-commands", split, len(y), skips)
        parts[split] = ModalityData(AUDIO, x, y, tuple(words))
    skips.write(scratch, {split: len(part) for split, part in parts.items()})
    return DatasetSplits("speech-commands", parts["train"], parts["test"])
