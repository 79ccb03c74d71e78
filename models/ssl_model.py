"""Shared encoder + SimCLR projection head: one network for both modalities."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from models.encoders import create_encoder, output_width

# State-dict prefix of the projection head: the part FedVSSL's and FASSL's clients keep to themselves.
HEAD_PREFIX = "projector."


def head_part(named: Mapping) -> dict:
    """The projection head's entries of a state dict (or any name -> array mapping)."""
    return {k: v for k, v in named.items() if k.startswith(HEAD_PREFIX)}


def encoder_part(named: Mapping) -> dict:
    """Everything but the projection head: the encoder's entries."""
    return {k: v for k, v in named.items() if not k.startswith(HEAD_PREFIX)}


class ProjectionHead(nn.Sequential):
    """SimCLR's MLP head: Linear-BN-ReLU-Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class SSLModel(nn.Module):
    """``features`` is what evaluation probes; ``forward`` returns projections for the loss."""

    def __init__(self, encoder_name: str, projection_hidden_dim: int, projection_dim: int,
                 encoder_options: dict | None = None) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder_name, **(encoder_options or {}))
        width = output_width(self.encoder)
        self.projector = ProjectionHead(width, projection_hidden_dim, projection_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))

    def branch(self, modality: str) -> SSLModel:
        """The network that handles ``modality``: this one, shared by both (the per-modality layout,
        :class:`models.per_modality.PerModalityModel`, answers with that modality's own)."""
        return self
