"""Seeded regression steps for the RepOptimizer equivalence tests: the same inputs for both networks."""

from __future__ import annotations

import torch
import torch.nn as nn


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, input_shape: tuple[int, ...],
                output_width: int) -> None:
    """``steps`` SGD steps on a squared error to random targets (seed 7), identical for every model."""
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x = torch.randn(*input_shape, generator=generator)
        goal = torch.randn(input_shape[0], output_width, generator=generator)
        loss = ((model(x) - goal) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
