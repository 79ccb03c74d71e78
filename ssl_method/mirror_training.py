"""ModalityMirror's phase 2 on one audio-visual client: the frozen audio-visual teacher distils into the
audio student (the audio encoder), beside the student's own NT-Xent (``ssl_method.modality_mirror``).

Each step draws a batch of the client's clips, pairs every clip with a random image of the *same class*
from the client's own images, and computes

* the teacher's fused feature of each pair (``teacher_features``): the frozen image encoder on the image
  (evaluation transform, no augmentation) and the frozen phase-1 audio encoder on the clip's first view;
* the student's encoder features of the same first view (the features evaluation probes);
* ``distill_weight * relational_distillation(student, teacher, T) + ssl_weight * NT-Xent`` of the
  student's projections of the clip's two views (``phase_two_loss``).

Adaptation: the paper's audio-visual clients hold *paired* samples (a video's frames and its sound track);
this project's audio-visual clients hold unpaired images and clips. The class labels are read only to form
pairs (an image and a clip of the same class stand in for a video's two streams); no loss uses them as a
target. A client with fewer than ``MIN_BATCH`` clips whose class it also has images of cannot form a batch
and does not train (``client_app.mirror_phase``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from app_config.modalities import AUDIO, IMAGE, MODALITIES
from data_partition.client_data import LocalData
from models.per_modality import PerModalityModel
from ssl_method.local_training import Batches, TrainSettings, make_optimizer
from ssl_method.losses import pair_loss
from ssl_method.modality_mirror import (
    MIN_BATCH,
    MirrorSettings,
    phase_two_loss,
    relational_distillation,
    teacher_features,
)


@dataclass(frozen=True)
class ClassPairs:
    """The clips that have an image of their class on this client, and each class's image indices."""

    clips: torch.Tensor  # indices into the client's audio samples
    clip_labels: torch.Tensor  # their classes
    images_of: dict[int, torch.Tensor]  # class -> indices into the client's image samples

    def __len__(self) -> int:
        return len(self.clips)

    def images_for(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One random image index of each label's class (seeded)."""
        out = torch.empty(len(labels), dtype=torch.long)
        for row, label in enumerate(labels.tolist()):
            pool = self.images_of[label]
            out[row] = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        return out


def class_pairs(data: LocalData) -> ClassPairs:
    """The client's class pairs (none when it lacks a modality or its labels)."""
    empty = ClassPairs(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), {})
    if any(m not in data.tensors or m not in data.labels for m in MODALITIES):
        return empty
    image_labels, clip_labels = data.labels[IMAGE], data.labels[AUDIO]
    images_of = {int(c): torch.nonzero(image_labels == c).flatten() for c in torch.unique(image_labels)}
    keep = torch.tensor([int(c) in images_of for c in clip_labels.tolist()], dtype=torch.bool)
    clips = torch.nonzero(keep).flatten()
    return ClassPairs(clips, clip_labels[clips], images_of)


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in evaluation mode with no gradients: the teacher."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def distil_locally(model: PerModalityModel, teacher: PerModalityModel, data: LocalData, views: dict[str, nn.Module],
                   image_eval: nn.Module, settings: TrainSettings, mirror: MirrorSettings, device: torch.device,
                   seed: int) -> dict[str, float]:
    """Train ``model``'s audio network in place from ``teacher`` (frozen, see :func:`freeze`); return the
    losses and counts in the local trainer's metric names (no image examples: the image encoder is not
    trained in phase 2)."""
    pairs = class_pairs(data)
    if len(pairs) < MIN_BATCH:
        raise ValueError(f"phase 2: {len(pairs)} clips have an image of their class, fewer than {MIN_BATCH}")
    student, teacher_image, teacher_audio = model.branch(AUDIO), teacher.branch(IMAGE), teacher.branch(AUDIO)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # augmentation draws
    batches = Batches(torch.arange(len(pairs)), max(settings.batch_size, MIN_BATCH), generator)
    steps = settings.local_epochs * batches.steps_per_epoch()
    if settings.max_local_steps > 0:
        steps = min(steps, settings.max_local_steps)
    student.train()
    optimizer = make_optimizer(student, settings)
    objective = pair_loss(settings.objective, settings.temperature, settings.barlow_lambda)
    sums = {"distill": torch.zeros((), device=device), "ssl": torch.zeros((), device=device)}
    finite = torch.ones((), dtype=torch.bool, device=device)
    started = time.perf_counter()
    for _ in range(steps):
        rows = batches.next()
        clips = data.tensors[AUDIO][pairs.clips[rows]].to(device)
        images = data.tensors[IMAGE][pairs.images_for(pairs.clip_labels[rows], generator)].to(device)
        view1, view2 = views[AUDIO](clips), views[AUDIO](clips)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.autocast == "bf16"):
            with torch.no_grad():
                target = teacher_features(teacher_image.features(image_eval(images)).float(),
                                          teacher_audio.features(view1).float(), mirror.fusion)
            features = student.features(view1)
            z1, z2 = student.projector(features), student(view2)
        distill = relational_distillation(features.float(), target, mirror.temperature)
        ssl = objective(z1.float(), z2.float())
        loss = phase_two_loss(distill, ssl, mirror)
        finite &= torch.isfinite(loss.detach())
        loss.backward()
        optimizer.step()
        sums["distill"] += distill.detach()
        sums["ssl"] += ssl.detach()
    if not bool(finite):
        raise FloatingPointError("phase-2 loss became NaN/Inf: lower learning-rate")
    elapsed = time.perf_counter() - started
    seen = steps * batches.batch_size
    distill_mean, ssl_mean = float(sums["distill"]) / steps, float(sums["ssl"]) / steps
    return {
        "steps": float(steps), "train-seconds": elapsed, "samples": float(seen),
        "samples-per-second": seen / max(elapsed, 1e-9),
        "loss-image": 0.0, "loss-audio": ssl_mean, "loss-distill": distill_mean,
        "loss": mirror.distill_weight * distill_mean + mirror.ssl_weight * ssl_mean,
        "num-image-examples": 0.0, "num-audio-examples": float(len(pairs)),
    }
