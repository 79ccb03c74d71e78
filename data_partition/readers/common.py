"""What every dataset reader shares: layout checks, skip accounting, decoding, on-disk arrays.

Readers turn a dataset in its standard on-disk layout into the one in-memory
form (:class:`~data_partition.modality_data.DatasetSplits`). They run once, in
the array cache's build step, so they favour robustness over speed: a file
that cannot be read is skipped and counted (the counts end up in the cache's
``meta.json``), never fatal. Decoded samples go straight into a memory-mapped
array in the build's scratch folder, so a dataset larger than RAM can be built.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

SAMPLE_RATE = 16_000
RATE_RANGE = (4_000, 192_000)  # sample rates a reader accepts (Hz); real datasets use 8-48 kHz
RATE_STEP = 100  # rates are rounded to this before resampling, so the resampling kernel stays small
IMAGE_FORMATS = ("JPEG", "PNG")  # what the image layouts hold; PIL opens nothing else
MAX_CLASS_ID = 100_000  # class ids in list files are in [0, MAX_CLASS_ID)
MAX_LIST_BYTES = 256 * 2**20  # a metadata or list file larger than this is not one of the datasets'
SUMMARY_FILE = "summary.json"  # read by data_partition.array_cache
_EXAMPLES_PER_REASON = 5
_CHUNK = 256


class LayoutError(ValueError):
    """The data root does not hold the dataset in its standard layout (one-line message)."""


def dataset_folder(data_root: Path, names: Sequence[str], required: Sequence[str], expected: str, how: str) -> Path:
    """The folder ``data_root/<one of names>`` that holds every ``required`` path, or a one-line LayoutError.

    ``expected`` spells the layout for the message (e.g. ``cifar-10-batches-py/{data_batch_1..5,...}``)
    and ``how`` says where to get the data.
    """
    data_root = Path(data_root).expanduser()
    if not data_root.is_dir():
        raise LayoutError(f"data-root {data_root} does not exist; it should hold {expected} ({how})")
    missing: list[str] = []
    for name in names:
        folder = data_root / name
        absent = [r for r in required if not (folder / r).exists()]
        if not absent:
            return folder
        if folder.is_dir() and not missing:
            missing = absent
    detail = f" (missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})" if missing else ""
    if not missing and all((data_root / r).exists() for r in required):
        detail = f" (data-root points inside the dataset folder: set it to {data_root.parent})"
    raise LayoutError(f"data-root {data_root} has no {expected}{detail}; {how}")


class Skips:
    """Files skipped while reading, counted per reason, with a few examples each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, what: object, error: BaseException | None = None) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _EXAMPLES_PER_REASON:
            shown.append(str(what) if error is None else f"{what}: {type(error).__name__}: {error}"[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self, kept: dict[str, int]) -> dict:
        return {"kept": dict(kept), "skipped": dict(sorted(self.counts.items())),
                "skipped-total": self.total, "skipped-examples": self.examples}

    def write(self, scratch: Path, kept: dict[str, int]) -> None:
        """Leave the summary in the build folder; the array cache stores it in ``meta.json``."""
        (Path(scratch) / SUMMARY_FILE).write_text(json.dumps(self.summary(kept)))


def fit_length(wave: np.ndarray, clip_samples: int) -> np.ndarray:
    """Keep the first ``clip_samples`` samples, zero-padding shorter clips at the end."""
    if wave.size >= clip_samples:
        return wave[:clip_samples]
    return np.pad(wave, (0, clip_samples - wave.size))


@lru_cache(maxsize=8)
def _resampler(orig_rate: int):
    import torchaudio.transforms as T

    return T.Resample(orig_rate, SAMPLE_RATE)


def regular_file(path: Path) -> Path:
    """``path`` when it is a regular file; a FIFO, device or folder would block or mislead a reader."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise FileNotFoundError(f"{path}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise LayoutError(f"{path}: not a regular file")
    return Path(path)


def inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` when it stays inside ``folder`` (list files name files relative to the dataset), else None."""
    candidate = Path(folder) / name
    try:
        if candidate.resolve().is_relative_to(Path(folder).resolve()):
            return candidate
    except (OSError, RuntimeError, ValueError):
        pass
    return None


def class_id(text: str) -> int:
    """A class id read from a list file: an int in ``[0, MAX_CLASS_ID)`` (ValueError otherwise)."""
    value = int(text)
    if not 0 <= value < MAX_CLASS_ID:
        raise ValueError(f"class id {value} outside [0, {MAX_CLASS_ID})")
    return value


def load_wav(path: Path, clip_samples: int) -> np.ndarray:
    """A sound file as int16 mono 16 kHz, cut or zero-padded to ``clip_samples``.

    Only the frames needed for the clip are read. Raises on an unreadable or empty
    file, and on a sample rate outside ``RATE_RANGE``; other rates are rounded to
    ``RATE_STEP`` Hz before resampling (at most 0.6 % pitch at 8 kHz), so the
    resampling kernel stays small whatever rate a header claims.
    """
    import soundfile as sf

    with sf.SoundFile(str(regular_file(path))) as fh:
        rate = fh.samplerate
        if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
            raise ValueError(f"sample rate {rate} Hz outside [{RATE_RANGE[0]}, {RATE_RANGE[1]}]")
        frames = fh.read(math.ceil(clip_samples * rate / SAMPLE_RATE), dtype="float32", always_2d=True)
    if frames.size == 0:
        raise ValueError("no audio frames")
    wave = frames.mean(axis=1)
    rate = max(RATE_STEP, int(round(rate / RATE_STEP)) * RATE_STEP)
    if rate != SAMPLE_RATE:
        import torch

        with torch.no_grad():
            wave = _resampler(rate)(torch.from_numpy(np.ascontiguousarray(wave))).numpy()
    if not np.isfinite(wave).all():
        raise ValueError("non-finite samples")
    return np.round(np.clip(fit_length(wave, clip_samples), -1.0, 1.0) * 32767).astype(np.int16)


def load_image(path: Path, side: int) -> np.ndarray:
    """An image file as uint8 RGB ``(side, side, 3)``: centre square crop, then bilinear resize.

    Raises on an unreadable or truncated file (PIL decodes fully here).
    """
    from PIL import Image, ImageOps

    with Image.open(regular_file(path), formats=IMAGE_FORMATS) as img:
        img.load()
        rgb = img.convert("RGB")
    if rgb.size != (side, side):
        rgb = ImageOps.fit(rgb, (side, side), method=Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_into(scratch: Path, name: str, items: Sequence[tuple[Path, int]], decode: Callable[[Path], np.ndarray],
                item_shape: tuple[int, ...], dtype, skips: Skips) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``(path, label)`` items into an array on disk; unreadable or missing files are skipped and counted.

    Returns ``(x, y)`` with ``x`` memory-mapped from ``scratch/<name>.part`` (the
    cache copies it into its own ``.npy`` and deletes the part file).
    """
    if not items:
        return np.zeros((0, *item_shape), dtype), np.zeros(0, np.int64)
    out = np.lib.format.open_memmap(Path(scratch) / f"{name}.part", mode="w+", dtype=dtype,
                                    shape=(len(items), *item_shape))
    labels: list[int] = []

    def attempt(item: tuple[Path, int]):
        try:
            return decode(item[0]), None
        except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable file"
            return None, err

    workers = max(1, min(4, os.cpu_count() or 1))
    # a progress bar on a terminal (a real dataset's first build decodes up to ~100k files), quiet otherwise
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(items), desc=f"decoding {name}", unit="file",
                                                   disable=None) as bar:
        for start in range(0, len(items), _CHUNK):
            chunk = items[start: start + _CHUNK]
            for (path, label), (sample, err) in zip(chunk, pool.map(attempt, chunk)):
                if sample is None:
                    gone = isinstance(err, FileNotFoundError) or not Path(path).exists()
                    skips.add("missing" if gone else "unreadable", path, None if gone else err)
                    continue
                out[len(labels)] = sample
                labels.append(label)
            bar.update(len(chunk))
    out.flush()
    return out[: len(labels)], np.asarray(labels, np.int64)


def require_samples(dataset: str, split: str, count: int, skips: Skips) -> None:
    """A split with no readable sample cannot be used: one-line error with the skip counts."""
    if count == 0:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(skips.counts.items())) or "no files found"
        raise LayoutError(f"{dataset}: no readable {split} samples ({reasons}); check the dataset files")


def read_text(path: Path) -> str:
    """A metadata or list file's text: a regular file of bounded size, UTF-8; one-line LayoutError otherwise."""
    path = regular_file(path)
    if (size := path.stat().st_size) > MAX_LIST_BYTES:
        raise LayoutError(f"{path}: {size} bytes, more than a dataset's list file holds")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LayoutError(f"{path}: not UTF-8 text (byte {err.start})") from None


def read_csv_rows(path: Path, reader: Callable = csv.reader) -> list:
    """A CSV file's rows through ``reader`` (``csv.reader`` or ``csv.DictReader``), read as :func:`read_text`
    reads; a malformed file (a field beyond csv's limit, a stray quote) is a one-line LayoutError."""
    try:
        return list(reader(io.StringIO(read_text(path), newline="")))
    except csv.Error as err:
        raise LayoutError(f"{path}: {err}") from None


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def existing_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Files directly in ``folder`` whose suffix (case-insensitive) is one of ``suffixes``, sorted."""
    wanted = {s.lower() for s in suffixes}
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in wanted and p.is_file())
