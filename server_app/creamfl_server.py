"""CreamFL's server side in the ServerApp: the public set, the global banks and the server's training, on the
run's device (``strategies.creamfl_strategy`` drives it; ``ssl_method.creamfl`` and
``ssl_method.creamfl_training`` compute).

Every round: the global model's representations of the public set per modality (chunked, no gradients) go
out as the banks; after the replies, each modality's client representations are ensembled with
``creamfl.aggregate_representations`` against the global bank of the *other* modality (row chunks, never
N x N), the server model (the global model of the round) trains one epoch of its own SSL objective on the
public set and one epoch of distillation towards the ensemble (``creamfl-kd-weight``), and becomes the new
global model. The training is seeded by (seed, round) inside a forked RNG, so the run's RNG state (kept by
checkpoints) is not touched and a resumed round computes what the uninterrupted one did.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from flwr.app import ArrayRecord

from app_config.modalities import MODALITIES
from app_config.run_config import RunConfig
from data_partition.datasets import load_splits, resolve_data_root
from data_partition.public_set import PublicSet, draw_public_set
from models.factory import build_model, eval_transforms, training_views
from ssl_method.creamfl import aggregate_representations
from ssl_method.creamfl_training import other_modality, public_representations, server_training
from ssl_method.local_training import train_settings, training_seed
from strategies.creamfl_strategy import CreamFLStrategy

SERVER_PARTITION = 2**31 - 1  # the server's stream of training seeds beside the clients' partition ids


def load_public_set(config: RunConfig) -> PublicSet:
    """The run's public pairs from its training splits (the same the federation plan holds apart)."""
    root = resolve_data_root(config.data_root)
    image, audio = load_splits(config.image_dataset, root), load_splits(config.audio_dataset, root)
    return draw_public_set(image.train, audio.train, config.creamfl_public_size, config.seed)


class CreamFLServer:
    """The server's model, public set and transforms for one run (``strategies.creamfl_strategy.PublicSetServer``)."""

    def __init__(self, config: RunConfig, device: torch.device, public: PublicSet | None = None) -> None:
        self.config, self.device = config, device
        self.public = load_public_set(config) if public is None else public
        self.model = build_model(config).to(device)
        self.views = training_views(config, device)
        self.transforms = eval_transforms(config, device)
        self.wire_dtype: str = config.update_dtype

    def indices(self) -> dict[str, np.ndarray]:
        return self.public.indices

    def _load(self, global_model: ArrayRecord) -> None:
        self.model.load_state_dict(global_model.to_torch_state_dict())

    def banks(self, global_model: ArrayRecord) -> dict[str, np.ndarray]:
        """The global model's (N, d) float32 representations of the public set, per modality."""
        self._load(global_model)
        return {m: public_representations(self.model, self.public.samples[m], self.transforms[m], self.device).numpy()
                for m in MODALITIES}

    def distil(self, server_round: int, global_model: ArrayRecord, replies: dict[str, list[np.ndarray]],
               banks: dict[str, np.ndarray], learning_rate: float | None) -> tuple[ArrayRecord, dict[str, float]]:
        """Ensemble, train, distil: the new global model and the round's server metrics."""
        targets: dict[str, torch.Tensor] = {}
        metrics: dict[str, float] = {}
        for modality in MODALITIES:
            if not replies[modality]:
                continue
            ensemble = aggregate_representations(replies[modality], banks[other_modality(modality)])
            targets[modality] = ensemble.aggregate.float()
            metrics[f"creamfl-weight-max-{modality}"] = float(ensemble.weights.max())
        self._load(global_model)
        settings = train_settings(self.config, self.model, learning_rate)
        seed = training_seed(self.config.seed, server_round, SERVER_PARTITION)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            metrics.update(server_training(self.model, self.public.samples, targets, self.views, self.transforms,
                                           dataclasses.replace(settings, local_epochs=1),
                                           self.config.creamfl_kd_weight, self.device, seed))
        state = {name: tensor.detach().cpu() for name, tensor in self.model.state_dict().items()}
        return ArrayRecord(state), metrics


def attach_public_set(strategy, config: RunConfig, device: torch.device) -> None:
    """Give a CreamFL strategy its server side (other strategies: nothing to do)."""
    if isinstance(strategy, CreamFLStrategy):
        strategy.rule.server = CreamFLServer(config, device)

