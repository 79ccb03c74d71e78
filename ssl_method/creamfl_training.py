"""CreamFL's training steps on the public set (``ssl_method.creamfl`` holds its formulas).

* :func:`public_representations`: a network's L2-normalised projections of public samples under the
  evaluation transform (no augmentation, so the server's and every client's vectors of sample i are
  comparable), in chunks, without gradients: what travels each round, both ways.
* :class:`PublicRegulariser`: the client's ``creamfl.client_regulariser`` on one public batch per local
  step, added to the local SSL loss (``train_locally``'s ``extra_loss``).
* :func:`server_training`: the server's round: a pass of its own training on the public set, then the
  distillation of its public representations towards the clients' ensemble.

Adaptations (the authors' models are image-text retrieval encoders trained with PCME on paired data):
a representation is this project's projection output (the NT-Xent space, ``projection-dim`` values), and
the server's own pass is the clients' objective (per-modality NT-Xent on two views of the public images
and clips): the only cross-modal pull is CreamFL's own, its inter-modal regulariser and ensemble weights.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from app_config.modalities import AUDIO, IMAGE
from data_partition.client_data import LocalData
from ssl_method.creamfl import client_regulariser, distillation_loss, inter_modal_loss, intra_modal_loss
from ssl_method.local_training import TrainSettings, make_optimizer, train_locally

CHUNK = 256  # public samples per forward pass when computing representations


def other_modality(modality: str) -> str:
    return AUDIO if modality == IMAGE else IMAGE


def public_representations(network: nn.Module, samples: torch.Tensor, transform: nn.Module, device: torch.device,
                           chunk: int = CHUNK) -> torch.Tensor:
    """(N, d) float32 on the CPU: ``normalise(network(transform(samples)))`` in evaluation mode, ``chunk``
    samples at a time, no gradients; the network's mode is restored."""
    was_training = network.training
    network.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(samples), chunk):
            batch = transform(samples[start:start + chunk].to(device))
            out.append(F.normalize(network(batch).float(), dim=1).cpu())
    network.train(was_training)
    return torch.cat(out)


class PublicRegulariser:
    """``regulariser_weight * (intra + inter)`` on a seeded public batch, one call per local step.

    ``banks``: the global model's representations of both modalities (sent this round); ``old``: this
    client's own representations before the round's training (MOON's negative), for the modalities it
    trains. The same batch indices serve both modalities (they are pairs).
    """

    def __init__(self, public: dict[str, torch.Tensor], banks: dict[str, torch.Tensor], old: dict[str, torch.Tensor],
                 transforms: dict[str, nn.Module], tau: float, weight: float, batch_size: int,
                 device: torch.device, seed: int) -> None:
        self.public, self.old, self.transforms = public, old, transforms
        self.banks = {m: bank.to(device) for m, bank in banks.items()}
        self.tau, self.weight, self.device = tau, weight, device
        self.batch_size = min(batch_size, len(next(iter(public.values()))))
        self.generator = torch.Generator().manual_seed(seed)
        self.total = torch.zeros((), device=device)
        self.calls = 0

    def __call__(self, model: nn.Module) -> torch.Tensor:
        n = len(self.banks[IMAGE])
        idx = torch.randperm(n, generator=self.generator)[: self.batch_size]
        intra, inter = [], []
        for modality in self.old:
            local = model(self.transforms[modality](self.public[modality][idx].to(self.device))).float()
            intra.append(intra_modal_loss(local, self.banks[modality][idx], self.old[modality][idx].to(self.device),
                                          self.tau))
            inter.append(inter_modal_loss(local, idx.to(self.device), self.banks[other_modality(modality)], self.tau))
        loss = client_regulariser(intra, inter, self.weight)
        self.total += loss.detach()
        self.calls += 1
        return loss

    def mean(self) -> float:
        return float(self.total) / max(self.calls, 1)


def server_training(model: nn.Module, public: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                    views: dict[str, nn.Module], transforms: dict[str, nn.Module], settings: TrainSettings,
                    kd_weight: float, device: torch.device, seed: int) -> dict[str, float]:
    """Train ``model`` in place: one epoch of its own SSL objective on the public set (capped by
    ``max-local-steps``), then one epoch of ``distillation_loss`` towards ``targets`` (the ensemble per
    modality; a modality no client sent is not distilled). Returns the two passes' mean losses."""
    started = time.perf_counter()
    own = train_locally(model, LocalData(dict(public)), views, dataclasses.replace(settings, local_epochs=1),
                        device, seed)
    metrics = {"server-loss-image": own["loss-image"], "server-loss-audio": own["loss-audio"],
               "server-ssl-steps": own["steps"]}
    n = len(next(iter(public.values())))
    batch = min(settings.batch_size, n)
    steps = max(1, n // batch)
    if settings.max_local_steps > 0:
        steps = min(steps, settings.max_local_steps)
    generator = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(n, generator=generator)
    goals = {m: t.to(device) for m, t in targets.items()}
    model.train()
    optimizer = make_optimizer(model, settings)
    total = torch.zeros((), device=device)
    for step in range(steps if goals else 0):
        idx = order[(step * batch) % n:][:batch]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        for modality, goal in goals.items():
            rep = model(transforms[modality](public[modality][idx].to(device)))
            loss = loss + distillation_loss(rep.float(), goal[idx.to(device)], kd_weight)
        if not bool(torch.isfinite(loss.detach())):
            raise FloatingPointError("creamfl: the server's distillation loss became NaN/Inf")
        loss.backward()
        optimizer.step()
        total += loss.detach()
    metrics["server-distill-loss"] = float(total) / steps if goals else 0.0
    metrics["server-distill-steps"] = float(steps if goals else 0)
    metrics["server-seconds"] = time.perf_counter() - started
    return metrics
