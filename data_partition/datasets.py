"""Dataset registry: config name -> modality, cached reader and layout check.

Embedded datasets are generated from installed packages. The others are read
from ``<data-root>/<standard folder>`` (see each module in
``data_partition/readers/``) and decoded once into ``<data-root>/cache/<name>``;
later runs and every worker read that cache memory-mapped, so the source files
are no longer needed once it exists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_partition import cluttered_digits, embedded, noisy_spoken_digits
from data_partition.array_cache import cache_ready, cache_summary, cached_splits
from data_partition.modality_data import AUDIO, IMAGE, DatasetSplits
from data_partition.readers import cifar, esc50, speech_commands, tiny_imagenet, vggsound
from data_partition.readers.common import LayoutError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    modality: str
    # build(scratch) for embedded data; build(data_root, scratch) when needs_source
    build: Callable[..., DatasetSplits]
    needs_source: bool  # True when it reads a user-supplied folder under data-root
    # Cheap check that data_root holds the source layout; raises LayoutError (one line) otherwise.
    check_layout: Callable[[Path], object] | None = None


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(IMAGE, embedded.build_digit_images, needs_source=False),
    "spoken-digits": DatasetSpec(AUDIO, embedded.build_spoken_digits, needs_source=False),
    "cluttered-digits": DatasetSpec(IMAGE, cluttered_digits.build, needs_source=False),
    "noisy-spoken-digits": DatasetSpec(AUDIO, noisy_spoken_digits.build, needs_source=False),
    "cifar10": DatasetSpec(IMAGE, cifar.build_cifar10, True, cifar.check_cifar10),
    "cifar100": DatasetSpec(IMAGE, cifar.build_cifar100, True, cifar.check_cifar100),
    "tiny-imagenet": DatasetSpec(IMAGE, tiny_imagenet.build, True, tiny_imagenet.check_layout),
    "vggsound-frames": DatasetSpec(IMAGE, vggsound.build_frames, True, vggsound.check_frames),
    "speech-commands": DatasetSpec(AUDIO, speech_commands.build, True, speech_commands.check_layout),
    "esc50": DatasetSpec(AUDIO, esc50.build, True, esc50.check_layout),
    "vggsound-audio": DatasetSpec(AUDIO, vggsound.build_audio, True, vggsound.check_audio),
}

def resolve_data_root(setting: str) -> Path:
    """The data root a run-config ``data-root`` value names: itself, else ``$FSSUAVL_DATA_ROOT``, else
    ``~/.cache/fssuavl`` (the default folders are created)."""
    if setting:
        return Path(setting).expanduser().resolve()
    env = os.environ.get("FSSUAVL_DATA_ROOT")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "fssuavl"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def dataset_names(modality: str) -> list[str]:
    return sorted(name for name, spec in DATASETS.items() if spec.modality == modality)


def cache_folder(name: str, data_root: Path) -> Path:
    return Path(data_root) / "cache" / name


def layout_problem(name: str, data_root: Path) -> str | None:
    """None when ``name`` can be loaded from ``data_root`` (cache built, or source laid out), else why not."""
    spec = DATASETS[name]
    if not spec.needs_source or spec.check_layout is None or cache_ready(cache_folder(name, data_root)):
        return None
    try:
        spec.check_layout(Path(data_root))
    except LayoutError as err:
        return str(err)
    return None


def load_splits(name: str, data_root: Path) -> DatasetSplits:
    """The named dataset, read (memory-mapped) from its array cache, which is built first if absent.

    Not memoised: reading a built cache costs milliseconds; callers that need a
    dataset repeatedly keep what this returns (e.g. ``data_partition.federation.Federation``).
    Raises :class:`LayoutError` (one line, naming the expected layout) when a
    real dataset's cache is absent and ``data_root`` does not hold its source.
    """
    spec = DATASETS[name]
    folder = cache_folder(name, data_root)
    if not spec.needs_source:
        return cached_splits(folder, spec.build)
    problem = layout_problem(name, data_root)
    if problem:
        raise LayoutError(problem)
    return cached_splits(folder, lambda scratch: spec.build(Path(data_root), scratch))


def skipped_files(name: str, data_root: Path) -> dict:
    """The reader's summary stored with the cache (kept / skipped counts); {} for embedded data."""
    return cache_summary(cache_folder(name, data_root))
