"""Dataset registry: config name -> modality and cached reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_partition import embedded
from data_partition.array_cache import cached_splits
from data_partition.modality_data import AUDIO, IMAGE, DatasetSplits


@dataclass(frozen=True)
class DatasetSpec:
    modality: str
    build: Callable[[Path], DatasetSplits]
    needs_source: bool  # True when it reads a user-supplied folder under data-root


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(IMAGE, embedded.build_digit_images, needs_source=False),
    "spoken-digits": DatasetSpec(AUDIO, embedded.build_spoken_digits, needs_source=False),
}

_LOADED: dict[tuple[str, str], DatasetSplits] = {}


def dataset_names(modality: str) -> list[str]:
    return sorted(name for name, spec in DATASETS.items() if spec.modality == modality)


def load_splits(name: str, data_root: Path) -> DatasetSplits:
    """Load (building once) the named dataset; memoised per process."""
    key = (name, str(data_root))
    if key not in _LOADED:
        spec = DATASETS[name]
        _LOADED[key] = cached_splits(Path(data_root) / "cache" / name, spec.build)
    return _LOADED[key]
