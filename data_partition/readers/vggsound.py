"""VGGSound (about 200k 10 s YouTube clips, 309 classes): audio, and video frames for paired use.

VGGSound is distributed as a list of YouTube ids; users download and extract
the clips themselves. Layout read here::

    vggsound/vggsound.csv                            no header: ytid,start_seconds,label,split
    vggsound/audio/<ytid>_<start:06d>.{wav,flac}     extracted audio, any rate, mono or stereo
    vggsound/frames/<ytid>_<start:06d>/*.jpg         extracted frames (the middle one is used) ...
    vggsound/frames/<ytid>_<start:06d>.jpg           ... or one frame per clip

``split`` is ``train`` or ``test``. Labels may contain commas, so the csv is read
with the csv module; classes are the csv's distinct labels, sorted, so the class
ids are the same for audio and frames whichever clips are present. Both readers
walk the csv in order, so where the same clips were extracted the audio and
frame datasets list them in the same order (paired use). Clips listed in the csv
but not extracted are skipped and counted as ``missing``, unreadable ones as
``unreadable``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from data_partition.modality_data import AUDIO, IMAGE, DatasetSplits, ModalityData
from data_partition.readers.common import (
    SAMPLE_RATE,
    Skips,
    dataset_folder,
    decode_into,
    load_image,
    load_wav,
    read_csv_rows,
    require_samples,
)

FOLDER = "vggsound"
CLIP_SECONDS = 10.0
IMAGE_SIDE = 64
AUDIO_SUFFIXES = (".wav", ".flac")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
_HOW = "extract the clips listed in vggsound.csv as described in data_partition/readers/vggsound.py"


def _expected(media: str) -> str:
    pattern = "audio/<ytid>_<start:06d>.wav" if media == "audio" else "frames/<ytid>_<start:06d>/*.jpg"
    return f"{FOLDER}/{{vggsound.csv,{pattern}}}"


def check_layout(data_root: Path, media: str) -> Path:
    return dataset_folder(data_root, (FOLDER,), ("vggsound.csv", media), _expected(media), _HOW)


def check_audio(data_root: Path) -> None:
    check_layout(data_root, "audio")


def check_frames(data_root: Path) -> None:
    check_layout(data_root, "frames")


def clip_stem(ytid: str, start_seconds: str) -> str:
    return f"{ytid}_{int(float(start_seconds)):06d}"


def read_csv(csv_path: Path, skips: Skips) -> list[tuple[str, str, str]]:
    """``(clip stem, label, split)`` per usable row, in file order."""
    rows = []
    for row in read_csv_rows(csv_path):
        if not row:
            continue
        try:
            ytid, start, label, split = (v.strip() for v in row)
            rows.append((clip_stem(ytid, start), label, split.lower()))
        except (ValueError, OverflowError):  # wrong column count, a start time that is not a finite number
            skips.add("bad-csv-row", ",".join(row)[:120])
    return rows


def _media_index(folder: Path, suffixes: tuple[str, ...], frame_folders: bool) -> dict[str, Path]:
    """Clip stem -> file, from one directory listing (a stat per clip would be slow on 200k clips)."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in suffixes:
            found.setdefault(entry.stem, entry)
        elif frame_folders and entry.is_dir():
            frames = sorted(p for p in entry.iterdir() if p.suffix.lower() in suffixes)
            if frames:
                found[entry.name] = frames[len(frames) // 2]
    return found


def _build(data_root: Path, scratch: Path, media: str, clip_seconds: float, side: int) -> DatasetSplits:
    folder = check_layout(data_root, media)
    skips = Skips()
    rows = read_csv(folder / "vggsound.csv", skips)
    classes = tuple(sorted({label for _, label, _ in rows}))
    index = {c: i for i, c in enumerate(classes)}
    shape: tuple[int, ...]
    dtype: type[np.generic]
    if media == "audio":
        files = _media_index(folder / "audio", AUDIO_SUFFIXES, frame_folders=False)
        clip = int(round(clip_seconds * SAMPLE_RATE))
        decode, shape, dtype, modality = partial(load_wav, clip_samples=clip), (clip,), np.int16, AUDIO
    else:
        files = _media_index(folder / "frames", FRAME_SUFFIXES, frame_folders=True)
        decode, shape, dtype, modality = partial(load_image, side=side), (side, side, 3), np.uint8, IMAGE
    items: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for stem, label, split in rows:
        if split not in items:
            skips.add("unknown-split", f"{stem},{split}")
        elif stem not in files:
            skips.add("missing", f"{media}/{stem}")
        else:
            items[split].append((files[stem], index[label]))
    name = f"vggsound-{media}"
    parts = {}
    for split in ("train", "test"):
        x, y = decode_into(scratch, f"{split}_x", items[split], decode, shape, dtype, skips)
        require_samples(name, split, len(y), skips)
        parts[split] = ModalityData(modality, x, y, classes)
    skips.write(scratch, {split: len(part) for split, part in parts.items()})
    return DatasetSplits(name, parts["train"], parts["test"])


def build_audio(data_root: Path, scratch: Path, clip_seconds: float = CLIP_SECONDS) -> DatasetSplits:
    return _build(data_root, scratch, "audio", clip_seconds, IMAGE_SIDE)


def build_frames(data_root: Path, scratch: Path, side: int = IMAGE_SIDE) -> DatasetSplits:
    return _build(data_root, scratch, "frames", CLIP_SECONDS, side)
