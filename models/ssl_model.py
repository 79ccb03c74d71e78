"""Shared encoder + SimCLR projection head: one network for both modalities."""

from __future__ import annotations

import torch
import torch.nn as nn

from models.encoders import create_encoder, output_width

# State-dict prefix of the projection head: the part FedVSSL's and FASSL's clients keep to themselves.
HEAD_PREFIX = "projector."


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

    def __init__(self, encoder_name: str, projection_hidden_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder_name)
        width = output_width(self.encoder)
        self.projector = ProjectionHead(width, projection_hidden_dim, projection_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))
