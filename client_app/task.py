"""What a client needs to train, built once per worker process and reused every round.

Flower rebuilds the ClientApp call for each message, but Ray actors live for
the whole run: the model, the augmentation pipelines and the client's data are
kept here, keyed by run and partition, so a round only loads new weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from app_config.run_config import RunConfig
from client_app.augment import AudioEval, AudioViews, ImageEval, ImageViews
from client_app.local_data import LocalSource, load_local_data
from client_app.trainer import LocalData, TrainSettings
from data_partition.datasets import load_splits
from data_partition.modality_data import AUDIO, IMAGE
from data_partition.partition import ClientPart, PlanSettings, load_or_build_plan
from models.audio_frontend import LogMelFrontEnd
from models.device import resolve_device
from models.recipes import resolve_recipe, round_learning_rate
from models.ssl_model import SSLModel


@dataclass
class ClientState:
    kind: str
    model: SSLModel
    data: LocalData
    views: dict[str, nn.Module]
    device: torch.device


def train_settings(config: RunConfig, model: SSLModel, learning_rate: float | None = None) -> TrainSettings:
    """Local training settings; ``learning_rate``: this round's rate sent by the server (else the recipe's)."""
    recipe = resolve_recipe(model.encoder, config.optimizer, config.learning_rate, config.weight_decay)
    return TrainSettings(
        local_epochs=config.local_epochs, max_local_steps=config.max_local_steps, batch_size=config.batch_size,
        optimizer=recipe.optimizer, learning_rate=recipe.learning_rate if learning_rate is None else learning_rate,
        momentum=config.momentum, weight_decay=recipe.weight_decay, temperature=config.temperature,
    )


def scheduled_learning_rate(config: RunConfig, model: SSLModel, server_round: int) -> float:
    """The learning rate the server sends for ``server_round`` (recipe's base rate on the run's schedule)."""
    base = train_settings(config, model).learning_rate
    return round_learning_rate(base, server_round, config.num_server_rounds, config.lr_schedule,
                               config.lr_warmup_rounds)


def plan_settings(config: RunConfig, num_partitions: int) -> PlanSettings:
    return PlanSettings.from_config(config, num_partitions)


def build_model(config: RunConfig) -> SSLModel:
    return SSLModel(config.encoder, config.projection_hidden_dim, config.projection_dim)


def frontend(config: RunConfig) -> LogMelFrontEnd:
    return LogMelFrontEnd(config.audio_n_mels, config.audio_hop_ms, config.audio_win_ms)


def training_views(config: RunConfig, device: torch.device) -> dict[str, nn.Module]:
    return {
        IMAGE: ImageViews(config.image_size, config.image_min_crop_scale, config.image_hflip).to(device),
        AUDIO: AudioViews(frontend(config), config.audio_n_mels).to(device),
    }


def eval_transforms(config: RunConfig, device: torch.device) -> dict[str, nn.Module]:
    return {IMAGE: ImageEval(config.image_size).to(device), AUDIO: AudioEval(frontend(config)).to(device)}


def federation_part(config: RunConfig, partition_id: int, num_partitions: int) -> tuple[ClientPart, LocalData]:
    """This client's modality and samples under the (cached) federation plan."""
    root = config.resolved_data_root()
    image = load_splits(config.image_dataset, root).train if config.image_dataset else None
    audio = load_splits(config.audio_dataset, root).train if config.audio_dataset else None
    plan = load_or_build_plan(
        plan_settings(config, num_partitions),
        None if image is None else image.y, None if audio is None else audio.y, root / "partitions",
    )
    if not 0 <= partition_id < len(plan):
        raise ValueError(f"partition-id {partition_id} is outside 0..{len(plan) - 1}")
    part = plan[partition_id]
    tensors = {}
    if len(part.image_indices):
        tensors[IMAGE] = torch.from_numpy(np.ascontiguousarray(image.x[np.sort(part.image_indices)]))
    if len(part.audio_indices):
        tensors[AUDIO] = torch.from_numpy(np.ascontiguousarray(audio.x[np.sort(part.audio_indices)]))
    return part, LocalData(tensors)


_RUN: dict[str, object] = {"key": None}
_MODELS: dict[str, tuple[SSLModel, dict[str, nn.Module], torch.device]] = {}
_PARTS: dict[object, tuple[str, LocalData]] = {}


def client_state(config: RunConfig, run_id: int, partition_id: int, num_partitions: int,
                 local: LocalSource | None = None) -> ClientState:
    """One model per worker (weights are replaced every round), data per partition.

    A worker serves many virtual clients in turn; caching every partition it has
    served holds at most one copy of the dataset, since partitions are disjoint.
    A deployed node (``local``: its node config's ``data-dir``) uses its own data
    instead of a partition (see ``client_app.local_data``).
    """
    run_key = (run_id, config)
    if _RUN["key"] != run_key:  # a new run: forget the previous one's state
        _MODELS.clear()
        _PARTS.clear()
        _RUN["key"] = run_key
    if "model" not in _MODELS:
        device = resolve_device(config.device)
        _MODELS["model"] = (build_model(config).to(device), training_views(config, device), device)
    key = (partition_id, num_partitions) if local is None else local
    if key not in _PARTS:
        if local is not None:
            _PARTS[key] = load_local_data(local)
        else:
            part, data = federation_part(config, partition_id, num_partitions)
            _PARTS[key] = (part.kind, data)
    model, views, device = _MODELS["model"]
    kind, data = _PARTS[key]
    return ClientState(kind, model, data, views, device)
