"""Training recipes per encoder family, and the learning rate of each federated round.

Convolutional encoders and vision transformers need different optimisers: the
SimCLR recipe for ResNets (SGD with momentum) makes a ViT trained from scratch
unlearn, while AdamW with a warm-up trains it (README, "Training recipe").
The transformer's AdamW rate is 2e-4 at batch 16 (1e-3 collapses the embedding
there) and scales with the square root of the batch size, the scaling rule for
Adam (Malladi et al., 2022): 8e-4 at batch 256, near DINO's 5e-4 for ViT-S.
The run-config keys ``optimizer``, ``learning-rate`` and ``weight-decay``
default to ``"auto"``: the recipe of the chosen encoder's family. A number (or
an optimiser name) overrides it, unscaled.

The server sends each round's learning rate to the clients in the train
config: a linear warm-up over ``lr-warmup-rounds`` rounds, then a cosine decay
over the remaining rounds (``lr-schedule = "cosine"``), or the base rate every
round (``"constant"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn as nn

AUTO = "auto"


@dataclass(frozen=True)
class Recipe:
    optimizer: str
    learning_rate: float
    weight_decay: float
    reference_batch: int = 0  # > 0: learning_rate is for this batch size and scales with its square root

    def for_batch(self, batch_size: int) -> Recipe:
        """This recipe with its learning rate scaled to ``batch_size`` (unchanged without a reference batch)."""
        if self.reference_batch <= 0:
            return self
        scale = math.sqrt(batch_size / self.reference_batch)
        return Recipe(self.optimizer, self.learning_rate * scale, self.weight_decay)


RECIPES = {
    # SimCLR on small images with SGD + momentum; lr chosen by measurement (README).
    "convnet": Recipe("sgd", 0.1, 5e-4),
    # ViT from scratch: AdamW, decoupled weight decay as in DeiT, warm-up from the schedule; the rate
    # measured at batch 16 (README) and scaled with the square root of the batch (Adam's rule).
    "transformer": Recipe("adamw", 2e-4, 0.05, reference_batch=16),
}


def encoder_family(encoder: nn.Module) -> str:
    """'transformer' when the network contains self-attention, else 'convnet'."""
    return "transformer" if any("Attention" in type(m).__name__ for m in encoder.modules()) else "convnet"


def resolve_recipe(encoder: nn.Module, optimizer: str, learning_rate, weight_decay, batch_size: int) -> Recipe:
    """The family's recipe at ``batch_size`` with every value that is not ``"auto"`` taken from the config."""
    base = RECIPES[encoder_family(encoder)].for_batch(batch_size)
    return Recipe(
        base.optimizer if optimizer == AUTO else optimizer,
        base.learning_rate if learning_rate == AUTO else float(learning_rate),
        base.weight_decay if weight_decay == AUTO else float(weight_decay),
    )


def round_learning_rate(base: float, server_round: int, num_rounds: int, schedule: str, warmup_rounds: int) -> float:
    """Learning rate of ``server_round`` (1-based): linear warm-up, then cosine decay or constant.

    Warm-up round r of W uses ``base * r / (W + 1)``; the first round after it
    uses ``base``; the cosine never reaches 0 in the last round, so every round trains.
    """
    if server_round <= warmup_rounds:
        return base * server_round / (warmup_rounds + 1)
    if schedule == "constant":
        return base
    decay_rounds = max(1, num_rounds - warmup_rounds)
    progress = min(server_round - warmup_rounds - 1, decay_rounds - 1) / decay_rounds  # rounds past the end: last rate
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))
