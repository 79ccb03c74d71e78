"""One simulated federation as its clients see it: the datasets, the plan, and each client's part.

A :class:`Federation` loads the training splits and the federation plan the
first time they are needed and keeps them for its own lifetime, so whoever
holds it decides how long they live (a worker's cache for one run, the
centralized baseline for one pooling). Nothing is memoised per process.
"""

from __future__ import annotations

import numpy as np
import torch

from app_config.run_config import RunConfig
from data_partition.client_data import LocalData
from data_partition.datasets import load_splits, resolve_data_root
from data_partition.modality_data import AUDIO, IMAGE, ModalityData
from data_partition.partition import ClientPart, PlanSettings, load_or_build_plan


class Federation:
    """The training data and plan of ``config`` split among ``num_partitions`` clients."""

    def __init__(self, config: RunConfig, num_partitions: int) -> None:
        self.config, self.num_partitions = config, num_partitions
        self.data_root = resolve_data_root(config.data_root)
        self._train: dict[str, ModalityData | None] | None = None
        self._plan: list[ClientPart] | None = None

    def train_split(self, modality: str) -> ModalityData | None:
        """The training split of the run's dataset of ``modality`` (None when the run names none)."""
        if self._train is None:
            names = {IMAGE: self.config.image_dataset, AUDIO: self.config.audio_dataset}
            self._train = {m: load_splits(name, self.data_root).train if name else None for m, name in names.items()}
        return self._train[modality]

    def plan(self) -> list[ClientPart]:
        """Every client's modality kind and sample indices (stored under ``<data-root>/partitions``)."""
        if self._plan is None:
            image, audio = self.train_split(IMAGE), self.train_split(AUDIO)
            self._plan = load_or_build_plan(
                PlanSettings.from_config(self.config, self.num_partitions),
                None if image is None else image.y, None if audio is None else audio.y,
                self.data_root / "partitions",
            )
        return self._plan

    def part(self, partition_id: int) -> tuple[ClientPart, LocalData]:
        """Client ``partition_id``'s modality kind and samples under the plan."""
        plan = self.plan()
        if not 0 <= partition_id < len(plan):
            raise ValueError(f"partition-id {partition_id} is outside 0..{len(plan) - 1}")
        part = plan[partition_id]
        tensors, labels = {}, {}
        for modality, indices in ((IMAGE, part.image_indices), (AUDIO, part.audio_indices)):
            split = self.train_split(modality)
            if len(indices) and split is not None:
                tensors[modality] = torch.from_numpy(np.ascontiguousarray(split.x[np.sort(indices)]))
                labels[modality] = torch.from_numpy(np.asarray(split.y)[np.sort(indices)].astype(np.int64))
        return part, LocalData(tensors, labels)


def federation_part(config: RunConfig, partition_id: int, num_partitions: int) -> tuple[ClientPart, LocalData]:
    """One client's part of a federation (loads the federation for this call only)."""
    return Federation(config, num_partitions).part(partition_id)
