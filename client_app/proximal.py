"""FedProx's proximal term on the client (Li et al., 2020).

The server (Flower's FedProx) sends ``proximal-mu`` in the train ConfigRecord;
the client adds ``(mu / 2) * sum_l ||w_l - w_global_l||^2`` over its trainable
parameters to every local step's loss, where ``w_global`` is a snapshot taken
right after the received global weights were loaded. Buffers (BatchNorm
statistics) have no gradient and are left out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn


def proximal_term(model: nn.Module, mu: float) -> Callable[[nn.Module], torch.Tensor] | None:
    """``extra_loss`` for ``train_locally``, anchored at ``model``'s current weights; None if mu is 0."""
    mu = float(mu)
    if mu < 0:
        raise ValueError(f"proximal-mu must be >= 0, got {mu}")
    if mu == 0:
        return None
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    anchors = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def extra_loss(current: nn.Module) -> torch.Tensor:
        params = dict(current.named_parameters())
        total = torch.stack([(params[n] - anchors[n]).pow(2).sum() for n in names]).sum()
        return (mu / 2.0) * total

    return extra_loss


def proximal_mu(config) -> float:
    """``proximal-mu`` from a train ConfigRecord (0 when the strategy sends none)."""
    return float(config.get("proximal-mu", 0.0)) if config is not None else 0.0
