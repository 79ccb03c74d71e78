"""Dataset registry: config name -> modality, cached reader and layout check.

Embedded datasets are generated from installed packages. The others are read
from ``<data-root>/<standard folder>`` (see each module in
``data_partition/readers/``) and decoded once into ``<data-root>/cache/<name>``;
later runs and every worker read that cache memory-mapped, so the source files
are no longer needed once it exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_partition import embedded
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
    "cifar10": DatasetSpec(IMAGE, cifar.build_cifar10, True, cifar.check_cifar10),
    "cifar100": DatasetSpec(IMAGE, cifar.build_cifar100, True, cifar.check_cifar100),
    "tiny-imagenet": DatasetSpec(IMAGE, tiny_imagenet.build, True, tiny_imagenet.check_layout),
    "vggsound-frames": DatasetSpec(IMAGE, vggsound.build_frames, True, vggsound.check_frames),
    "speech-commands": DatasetSpec(AUDIO, speech_commands.build, True, speech_commands.check_layout),
    "esc50": DatasetSpec(AUDIO, esc50.build, True, esc50.check_layout),
    "vggsound-audio": DatasetSpec(AUDIO, vggsound.build_audio, True, vggsound.check_audio),
}

_LOADED: dict[tuple[str, str], DatasetSplits] = {}


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
    """Load (building once) the named dataset; memoised per process.

    Raises :class:`LayoutError` (one line, naming the expected layout) when a
    real dataset's cache is absent and ``data_root`` does not hold its source.
    """
    key = (name, str(data_root))
    if key not in _LOADED:
        spec = DATASETS[name]
        folder = cache_folder(name, data_root)
        if spec.needs_source:
            problem = layout_problem(name, data_root)
            if problem:
                raise LayoutError(problem)
            build = lambda scratch: spec.build(Path(data_root), scratch)  # noqa: E731
        else:
            build = spec.build
        _LOADED[key] = cached_splits(folder, build)
    return _LOADED[key]


def skipped_files(name: str, data_root: Path) -> dict:
    """The reader's summary stored with the cache (kept / skipped counts); {} for embedded data."""
    return cache_summary(cache_folder(name, data_root))
