"""A client's tiny unlabelled data and its views (8 x 8 images, 64-sample clips), shared by the trainer tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from data_partition.client_data import LocalData

View = Callable[[torch.Tensor], torch.Tensor]


def tiny_local_data(image: int, audio: int) -> LocalData:
    """``image`` random 8 x 8 RGB images and ``audio`` random 64-sample int16 clips (a modality with 0 is absent)."""
    tensors = {}
    if image:
        tensors["image"] = torch.randint(0, 256, (image, 8, 8, 3), dtype=torch.uint8)
    if audio:
        tensors["audio"] = torch.randint(-3000, 3000, (audio, 64), dtype=torch.int16)
    return LocalData(tensors)


def tiny_views() -> dict[str, View]:
    """Noisy 3 x 8 x 8 views of :func:`tiny_local_data`'s images and clips (two calls give two views)."""
    return {"image": lambda b: b.permute(0, 3, 1, 2).float() / 255 + 0.05 * torch.randn(len(b), 3, 8, 8),
            "audio": lambda b: (b.float() / 32768).view(len(b), 1, 8, 8).expand(-1, 3, -1, -1)
            + 0.05 * torch.randn(len(b), 3, 8, 8)}
