"""The supervised ceiling: the same encoder trained with labels on the same data, views and sample budget.

A comparison table needs an upper reference beside the raw-input floor: what
the encoder reaches when it is told the classes. This trainer replaces the
contrastive loss of :func:`ssl_method.local_training.train_locally` by cross-entropy
of a linear classifier per modality on the backbone's features, and keeps
everything else: the same random views (both of them, so a step passes as
many samples through the network as an SSL step), the same batches, the same
optimiser recipe and schedule, and, through
:func:`experiments.centralized_training.train_centralized`, the pooled data
of the federated run and exactly its per-round sample budget. The classifiers
persist across rounds; the projection head is not trained (evaluation uses
the backbone's features, as for every other row).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from app_config.modalities import MODALITIES
from data_partition.client_data import LocalData
from models.encoders import output_width
from ssl_method.local_training import TrainSettings, make_optimizer, seeded_batches


def classifiers(model: nn.Module, num_classes: dict[str, int]) -> nn.ModuleDict:
    """A linear classifier per modality on the backbone's output (as wide as the projection head's input)."""
    width = output_width(model.encoder)
    return nn.ModuleDict({m: nn.Linear(width, n) for m, n in num_classes.items()})


def train_supervised(model: nn.Module, heads: nn.ModuleDict, data: LocalData, views: dict[str, nn.Module],
                     settings: TrainSettings, device: torch.device, seed: int) -> dict[str, float]:
    """``settings`` steps of cross-entropy on both views of each held modality; the trainer's metrics."""
    modalities = data.modalities
    if not modalities:
        raise ValueError("fewer than 2 samples of every modality: nothing to train on")
    batches, steps = seeded_batches(data, settings, seed)  # the contrastive trainer's batches and steps
    model.train()
    heads.train()
    optimizer = make_optimizer(nn.ModuleList([model, heads]), settings)
    loss_sums = {m: torch.zeros((), device=device) for m in modalities}
    seen = dict.fromkeys(modalities, 0)
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for modality in modalities:
            idx = batches[modality].next_indices()
            batch = data.tensors[modality][idx].to(device)
            labels = data.labels[modality][idx].to(device)
            loss = sum(F.cross_entropy(heads[modality](model.features(views[modality](batch))), labels)
                       for _ in range(2)) / 2
            total = total + loss
            loss_sums[modality] += loss.detach()
            seen[modality] += len(batch)
        total.backward()
        optimizer.step()
    if not bool(torch.isfinite(sum(loss_sums.values()))):
        raise FloatingPointError("supervised loss became NaN/Inf: lower learning-rate")
    elapsed = time.perf_counter() - started
    metrics = {"steps": float(steps), "train-seconds": elapsed, "samples": float(sum(seen.values()))}
    for modality in MODALITIES:
        metrics[f"loss-{modality}"] = float(loss_sums[modality]) / steps if modality in modalities else 0.0
    return metrics
