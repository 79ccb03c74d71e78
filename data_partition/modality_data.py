"""The one in-memory form every dataset reader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app_config.modalities import AUDIO, IMAGE

__all__ = ["AUDIO", "IMAGE", "DatasetSplits", "ModalityData"]


@dataclass(frozen=True)
class ModalityData:
    """Samples of one modality and split.

    ``x`` is uint8 ``(N, H, W, C)`` for images and int16 ``(N, T)`` 16 kHz mono
    waveforms for audio; ``y`` holds int64 class ids indexing ``classes``.
    """

    modality: str
    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} samples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> ModalityData:
        return ModalityData(self.modality, self.x[indices], self.y[indices], self.classes)


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's client-side training split and held-out evaluation split."""

    name: str
    train: ModalityData
    test: ModalityData
