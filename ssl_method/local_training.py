"""Local contrastive trainer (FSSUAVL): one encoder, each held modality in turn.

Every step draws a batch from each modality the client holds, makes two random
views of it, passes them through the *same* network and adds that modality's
NT-Xent loss; the summed loss is back-propagated once. Nothing pairs an image
with an audio clip: the modalities are only discriminated in one shared space.
With ``encoder-layout='per-modality'`` (ModalityMirror's phase 1) each
modality's views go through that modality's own network instead
(``model.branch(modality)``); everything else is the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from app_config.modalities import MODALITIES
from app_config.run_config import RunConfig
from data_partition.client_data import LocalData
from models.factory import recipe
from models.per_modality import Network, modality_network
from ssl_method.losses import pair_loss


@dataclass(frozen=True)
class TrainSettings:
    """One round's local training settings (no defaults: they come from the run config, see :func:`train_settings`)."""

    local_epochs: int
    max_local_steps: int  # 0: no cap
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    temperature: float
    objective: str  # "nt-xent" or "barlow-twins" (ssl_method.losses.OBJECTIVES)
    barlow_lambda: float
    autocast: str  # "bf16": forward passes under bfloat16 autocast; "off"
    channels_last: bool
    repopt_scales: str  # optimizer "repopt-sgd": the CSLA scales file (models.repopt); "" otherwise


def train_settings(config: RunConfig, model: Network, learning_rate: float | None = None) -> TrainSettings:
    """Local training settings; ``learning_rate``: this round's rate sent by the server (else the recipe's)."""
    chosen = recipe(config, model)
    return TrainSettings(
        local_epochs=config.local_epochs, max_local_steps=config.max_local_steps, batch_size=config.batch_size,
        optimizer=chosen.optimizer, learning_rate=chosen.learning_rate if learning_rate is None else learning_rate,
        momentum=config.momentum, weight_decay=chosen.weight_decay, temperature=config.temperature,
        objective=config.ssl_objective, barlow_lambda=config.barlow_lambda,
        autocast=config.autocast, channels_last=config.channels_last, repopt_scales=config.repopt_scales,
    )


def training_seed(seed: int, server_round: int, partition_id: int) -> int:
    """The seed of one client's local training in one round (round -1: its evaluation)."""
    return (seed * 1_000_003 + server_round * 10_007 + partition_id) % (2**31)


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.learning_rate,
                               momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if settings.optimizer == "repopt-sgd":
        return repopt_optimizer(model, settings)
    raise ValueError(f"optimizer {settings.optimizer!r} is unknown: use 'sgd', 'adamw' or 'repopt-sgd'")


def repopt_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """RepOptimizer SGD over ``model``, multiplying the gradients of its RepOpt network's kernels (models.repopt)."""
    from models.repopt import NETWORKS, RepOptSGD, gradient_multipliers, load_scales

    networks = [m for m in model.modules() if isinstance(m, NETWORKS)]
    if len(networks) != 1:
        raise ValueError("optimizer 'repopt-sgd' needs exactly one RepOpt-VGG or RepOpt-GhostNet encoder")
    scales = load_scales(Path(settings.repopt_scales), networks[0])
    return RepOptSGD(model.parameters(), gradient_multipliers(networks[0], scales), lr=settings.learning_rate,
                     momentum=settings.momentum, weight_decay=settings.weight_decay)


class Batches:
    """Endless shuffled mini-batches of one modality (reshuffled when exhausted)."""

    def __init__(self, data: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        self.data, self.generator = data, generator
        self.batch_size = min(batch_size, len(data))
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def steps_per_epoch(self) -> int:
        return max(1, len(self.data) // self.batch_size)

    def next_indices(self) -> torch.Tensor:
        if self._pos + self.batch_size > len(self._order):
            self._order = torch.randperm(len(self.data), generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos: self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    def next(self) -> torch.Tensor:
        return self.data[self.next_indices()]


def seeded_batches(data: LocalData, settings: TrainSettings, seed: int) -> tuple[dict[str, Batches], int]:
    """Each held modality's batches and the number of local steps (the epochs of the largest modality,
    capped by ``max_local_steps``); seeds the batch order and the augmentation draws."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # augmentation draws
    batches = {m: Batches(data.tensors[m], settings.batch_size, generator) for m in data.modalities}
    steps = settings.local_epochs * max(b.steps_per_epoch() for b in batches.values())
    if settings.max_local_steps > 0:
        steps = min(steps, settings.max_local_steps)
    return batches, steps


def train_locally(
    model: nn.Module,
    data: LocalData,
    views: dict[str, nn.Module],
    settings: TrainSettings,
    device: torch.device,
    seed: int,
    extra_loss=None,
) -> dict[str, float]:
    """Train ``model`` in place; return per-modality losses and work counts.

    ``extra_loss(model)`` (e.g. FedProx's proximal term) is added to each step's loss.
    """
    modalities = data.modalities
    if not modalities:
        raise ValueError("client holds fewer than 2 samples of every modality: nothing to contrast")
    batches, steps = seeded_batches(data, settings, seed)

    model.train()
    layout = torch.channels_last if settings.channels_last else None
    if layout is not None:
        model.to(memory_format=layout)
    optimizer = make_optimizer(model, settings)
    objective = pair_loss(settings.objective, settings.temperature, settings.barlow_lambda)
    # Losses stay on the device and are read once after the last step: a per-step .item() would
    # wait for the GPU every step. A NaN/Inf step is caught then (its update is already useless).
    loss_sums = {m: torch.zeros((), device=device) for m in modalities}
    finite = torch.ones((), dtype=torch.bool, device=device)
    seen = dict.fromkeys(modalities, 0)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for modality in modalities:
            batch = batches[modality].next().to(device, non_blocking=True)
            view1, view2 = views[modality](batch), views[modality](batch)
            if layout is not None and view1.dim() == 4:
                view1, view2 = view1.contiguous(memory_format=layout), view2.contiguous(memory_format=layout)
            network = modality_network(model, modality)  # the shared network, or the modality's own
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.autocast == "bf16"):
                z1, z2 = network(view1), network(view2)
            loss = objective(z1.float(), z2.float())  # the loss in float32
            total = total + loss
            loss_sums[modality] += loss.detach()
            seen[modality] += len(batch)
        if extra_loss is not None:
            total = total + extra_loss(model)
        finite &= torch.isfinite(total.detach())
        total.backward()
        optimizer.step()
    if layout is not None:  # replies and checkpoints keep the usual layout
        model.to(memory_format=torch.contiguous_format)
    if not bool(finite):
        raise FloatingPointError("local loss became NaN/Inf: lower learning-rate")
    loss_means = {m: float(loss_sums[m]) / steps for m in modalities}
    elapsed = time.perf_counter() - started

    metrics = {
        "steps": float(steps),
        "train-seconds": elapsed,
        "samples": float(sum(seen.values())),
        "samples-per-second": sum(seen.values()) / max(elapsed, 1e-9),
    }
    if device.type == "cuda":
        metrics["peak-gpu-mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    for modality in MODALITIES:
        metrics[f"loss-{modality}"] = loss_means.get(modality, 0.0)
        metrics[f"num-{modality}-examples"] = float(data.count(modality)) if modality in modalities else 0.0
    metrics["loss"] = sum(metrics[f"loss-{m}"] for m in modalities)
    return metrics
