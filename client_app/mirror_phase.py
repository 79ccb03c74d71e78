"""ModalityMirror's phase 2 on the client (``strategy='modality-wise'``, rounds after
``mirror-phase1-rounds``): who trains, where the teacher comes from, what an idle client replies.

* An audio-visual client with at least three clips that have an image of their class
  (``ssl_method.mirror_training``) distils the teacher into its audio encoder.
* Any other client (visual-only, audio-only, an audio-visual one without class pairs) does not train: it
  replies the global model unchanged with zero per-modality counts and ``mirror-idle`` = 1. The reply is a
  success (no error, so not a failure for the round loop, and it counts towards ``min-train-nodes``), and
  the modality-wise mean gives it no weight in either modality (``strategies.mirror_phases``).
* The teacher is the global model just loaded (its image encoder is the phase boundary's: phase 2 never
  moves it) with the phase boundary's audio encoder from the message's ``mirror-teacher`` record, which the
  server sends with every phase-2 train message. A phase-2 message without it is refused (an error reply).
"""

from __future__ import annotations

import copy

import torch.nn as nn
from flwr.app import RecordDict

from app_config.mirror_schedule import PHASE_TWO, mirror_phase
from app_config.modalities import MODALITIES
from app_config.run_config import RunConfig
from data_partition.client_data import LocalData
from models.per_modality import PerModalityModel
from ssl_method.mirror_training import class_pairs, freeze
from ssl_method.modality_mirror import MIN_BATCH, MirrorSettings
from strategies.mirror_phases import TEACHER_KEY


def mirror_settings(config: RunConfig) -> MirrorSettings | None:
    """The run's ModalityMirror settings; None when the run has no phase 2."""
    if config.strategy != "modality-wise" or not config.mirror_phase1_rounds:
        return None
    return MirrorSettings(config.mirror_phase1_rounds, config.mirror_temperature, config.mirror_fusion,
                          config.mirror_distill_weight, config.mirror_ssl_weight)


def in_phase_two(config: RunConfig, server_round: int) -> bool:
    settings = mirror_settings(config)
    return settings is not None and mirror_phase(server_round, settings.phase1_rounds) == PHASE_TWO


def takes_part(data: LocalData) -> bool:
    """Whether this client distils in phase 2: both modalities and enough class pairs for one batch."""
    return len(class_pairs(data)) >= MIN_BATCH


def per_modality(model: nn.Module) -> PerModalityModel:
    """``model`` as the per-modality layout phase 2 needs, or a one-line ValueError."""
    if not isinstance(model, PerModalityModel):
        raise ValueError("phase 2: needs encoder-layout='per-modality'")
    return model


def teacher_model(model: nn.Module, content: RecordDict) -> PerModalityModel:
    """A frozen copy of ``model`` (the global model, already loaded) with the teacher's audio encoder from
    ``content``; a one-line ValueError when the record is missing or does not fit the model."""
    if TEACHER_KEY not in content.array_records:
        raise ValueError(f"phase 2: the train message holds no {TEACHER_KEY!r} record")
    weights = content.array_records[TEACHER_KEY].to_torch_state_dict()
    expected = model.state_dict()
    wrong = [name for name, tensor in weights.items()
             if name not in expected or tuple(expected[name].shape) != tuple(tensor.shape)]
    if wrong or not weights:
        raise ValueError(f"phase 2: the teacher record does not fit this model (e.g. {(wrong or ['empty'])[0]!r})")
    teacher = copy.deepcopy(per_modality(model))
    teacher.load_state_dict(weights, strict=False)
    freeze(teacher)
    return teacher


def idle_metrics(data: LocalData) -> dict[str, float]:
    """An idle client's metrics: no steps, no per-modality examples, ``num-examples`` its sample count (a
    reply must weigh > 0 to pass the checks; the per-modality counts of 0 give it no weight)."""
    metrics = {"steps": 0.0, "train-seconds": 0.0, "samples": 0.0, "samples-per-second": 0.0, "loss": 0.0,
               "mirror-idle": 1.0, "num-examples": float(data.total())}
    for modality in MODALITIES:
        metrics[f"loss-{modality}"] = 0.0
        metrics[f"num-{modality}-examples"] = 0.0
    return metrics
