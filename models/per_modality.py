"""One encoder and projection head per modality (``encoder-layout='per-modality'``): ModalityMirror's and
Harmony's uni-modal encoders, the layout ``strategies.modality_wise`` averages modality by modality.

The branches are :class:`~models.ssl_model.SSLModel` objects held as the attributes ``image`` and ``audio``,
so every state-dict name starts with ``image.`` or ``audio.`` (the prefixes the modality-wise rule reads).
Both layouts answer :meth:`branch` (``SSLModel.branch`` returns itself): training, central evaluation and
the frozen-encoder evaluation ask for "the network of modality m" and never need to know the layout.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn as nn

from app_config.modalities import AUDIO, IMAGE, MODALITIES
from models.ssl_model import SSLModel

SHARED, PER_MODALITY = "shared", "per-modality"
LAYOUTS = (SHARED, PER_MODALITY)


class PerModalityModel(nn.Module):
    """An image network and an audio network of the same architecture, each with its own head."""

    def __init__(self, encoder_name: str, projection_hidden_dim: int, projection_dim: int,
                 encoder_options: dict | None = None) -> None:
        super().__init__()
        self.image = SSLModel(encoder_name, projection_hidden_dim, projection_dim, encoder_options)
        self.audio = SSLModel(encoder_name, projection_hidden_dim, projection_dim, encoder_options)

    def branch(self, modality: str) -> SSLModel:
        """The network of ``modality`` (a one-line ValueError for another name)."""
        if modality == IMAGE:
            return self.image
        if modality == AUDIO:
            return self.audio
        raise ValueError(f"modality: unknown value {modality!r}; valid: {', '.join(MODALITIES)}")


Network = SSLModel | PerModalityModel  # what build_model returns, by encoder-layout


class ModalityNetwork(Protocol):
    """What training and evaluation use of the network of one modality (an SSLModel, or a stand-in)."""

    def eval(self) -> nn.Module: ...

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def modality_network(model: nn.Module, modality: str) -> ModalityNetwork:
    """``model.branch(modality)`` for either layout; a model without branches (the raw input, a test double)
    is its own network for every modality."""
    branch = getattr(model, "branch", None)
    return branch(modality) if callable(branch) else cast(ModalityNetwork, model)
