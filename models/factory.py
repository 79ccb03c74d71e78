"""Factories from a run config: the network, its audio front end, training views and evaluation transforms.

The ClientApp, the ServerApp's central evaluation and every experiment build
these the same way, from here. Encoders come from timm's registry
(:func:`timm.create_model`; the project's own are registered by
:mod:`models.encoders`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from app_config.modalities import AUDIO, IMAGE
from app_config.run_config import RunConfig, kernel_sizes
from models.audio_frontend import LogMelFrontEnd
from models.audio_inceptionnext import is_inceptionnext
from models.augment import AudioEval, AudioViews, ImageEval, ImageViews
from models.per_modality import PER_MODALITY, Network, PerModalityModel
from models.recipes import Recipe, resolve_recipe, round_learning_rate
from models.ssl_model import SSLModel


def build_model(config: RunConfig) -> Network:
    """The run's model: one shared network, or one per modality (``encoder-layout='per-modality'``); with
    ``optimizer='repopt-sgd'`` (shared layout only) its plain RepOpt network starts as RepOpt says
    (the merged kernels of a CSLA network with the scales of ``repopt-scales``, drawn from ``seed``)."""
    if config.encoder_layout == PER_MODALITY:
        return PerModalityModel(config.encoder, config.projection_hidden_dim, config.projection_dim,
                                encoder_options(config))
    model = SSLModel(config.encoder, config.projection_hidden_dim, config.projection_dim, encoder_options(config))
    if config.optimizer == "repopt-sgd":
        from pathlib import Path

        from models.repopt import NETWORKS, load_scales, reinitialise_target

        encoder = model.encoder
        assert isinstance(encoder, NETWORKS)
        reinitialise_target(encoder, load_scales(Path(config.repopt_scales), encoder), seed=config.seed)
    return model


def encoder_options(config: RunConfig) -> dict:
    """The run-config keys that shape the chosen encoder (the InceptionNeXt encoders' kernel sizes)."""
    if is_inceptionnext(config.encoder):
        return {"time_kernels": kernel_sizes(config.inceptionnext_time_kernels),
                "freq_kernels": kernel_sizes(config.inceptionnext_freq_kernels)}
    return {}


def frontend(config: RunConfig) -> LogMelFrontEnd:
    return LogMelFrontEnd(config.audio_n_mels, config.audio_hop_ms, config.audio_win_ms)


def training_views(config: RunConfig, device: torch.device) -> dict[str, nn.Module]:
    return {
        IMAGE: ImageViews(config.image_size, config.image_min_crop_scale, config.image_hflip,
                          config.image_hue_jitter, config.image_grayscale_p).to(device),
        AUDIO: AudioViews(frontend(config), config.audio_n_mels, stretch=config.audio_stretch).to(device),
    }


def eval_transforms(config: RunConfig, device: torch.device) -> dict[str, nn.Module]:
    return {IMAGE: ImageEval(config.image_size).to(device), AUDIO: AudioEval(frontend(config)).to(device)}


def recipe(config: RunConfig, model: Network) -> Recipe:
    """The encoder family's optimiser recipe with the config's non-"auto" values (both branches of the
    per-modality layout are the same family: the image branch's encoder decides)."""
    return resolve_recipe(model.branch(IMAGE).encoder, config.optimizer, config.learning_rate, config.weight_decay,
                          config.batch_size)


def scheduled_learning_rate(config: RunConfig, model: Network, server_round: int) -> float:
    """The learning rate the server sends for ``server_round`` (recipe's base rate on the run's schedule)."""
    base = recipe(config, model).learning_rate
    return round_learning_rate(base, server_round, config.num_server_rounds, config.lr_schedule,
                               config.lr_warmup_rounds)
