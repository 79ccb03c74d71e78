"""ModalityMirror's phase 2 on a client: class pairs, only the audio student moves, the teacher stays frozen,
and the client side's refusals and idle reply."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from client_app.mirror_phase import idle_metrics, in_phase_two, mirror_settings, takes_part, teacher_model
from data_partition.client_data import LocalData
from models.per_modality import PerModalityModel
from ssl_method.local_training import TrainSettings
from ssl_method.mirror_training import class_pairs, distil_locally, freeze
from ssl_method.modality_mirror import MirrorSettings
from strategies.mirror_phases import TEACHER_KEY, teacher_of

SETTINGS = TrainSettings(repopt_scales="", local_epochs=1, max_local_steps=2, batch_size=4, optimizer="sgd",
                         learning_rate=0.05, momentum=0.9, weight_decay=5e-4, temperature=0.5, objective="nt-xent",
                         barlow_lambda=0.0051, autocast="off", channels_last=False)
VIEWS = {"image": lambda b: b.permute(0, 3, 1, 2).float() / 255,
         "audio": lambda b: (b.float() / 32768).view(len(b), 1, 8, 8).expand(-1, 3, -1, -1)
         + 0.05 * torch.randn(len(b), 3, 8, 8)}


def _data(image_labels: list[int], audio_labels: list[int]) -> LocalData:
    generator = torch.Generator().manual_seed(0)
    return LocalData(
        {"image": torch.randint(0, 256, (len(image_labels), 8, 8, 3), dtype=torch.uint8, generator=generator),
         "audio": torch.randint(-3000, 3000, (len(audio_labels), 64), dtype=torch.int16, generator=generator)},
        {"image": torch.tensor(image_labels), "audio": torch.tensor(audio_labels)})


def test_pairs_keep_only_clips_whose_class_has_an_image():
    pairs = class_pairs(_data([0, 0, 2], [0, 1, 2, 2, 5]))
    assert pairs.clips.tolist() == [0, 2, 3] and pairs.clip_labels.tolist() == [0, 2, 2]
    drawn = pairs.images_for(torch.tensor([0, 2, 0]), torch.Generator().manual_seed(1))
    assert drawn[1] == 2 and set(drawn[[0, 2]].tolist()) <= {0, 1}
    assert len(class_pairs(LocalData({"audio": torch.zeros(4, 64)}))) == 0  # no images, no pairs
    assert not takes_part(_data([0, 1], [2, 3, 4])) and takes_part(_data([0], [0, 0, 0]))


def test_phase_two_moves_only_the_audio_student_and_not_the_teacher():
    torch.manual_seed(0)
    model = PerModalityModel("test_resnet", 16, 8)
    teacher = freeze(PerModalityModel("test_resnet", 16, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    data = _data([0, 1, 0, 1, 2, 2], [0, 1, 1, 0, 2, 0, 1, 3])
    metrics = distil_locally(model, teacher, data, VIEWS, VIEWS["image"], dataclasses.replace(SETTINGS, batch_size=3),
                             MirrorSettings(phase1_rounds=1), torch.device("cpu"), seed=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("audio."))
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert metrics["steps"] == 2 and metrics["num-audio-examples"] == 7  # 7 paired clips // 3 a batch and metrics["num-image-examples"] == 0
    assert metrics["loss-distill"] >= 0 and metrics["loss"] == pytest.approx(
        metrics["loss-distill"] + metrics["loss-audio"])


def test_the_teacher_is_the_global_model_with_the_boundary_audio_encoder():
    torch.manual_seed(0)
    boundary = PerModalityModel("test_resnet", 16, 8)
    model = PerModalityModel("test_resnet", 16, 8)  # the audio encoder has moved since the boundary
    arrays = teacher_of(ArrayRecord(boundary.state_dict()))
    content = RecordDict({TEACHER_KEY: ArrayRecord({k: Array(v) for k, v in arrays.items()})})
    teacher = teacher_model(model, content)
    state, boundary_state, model_state = teacher.state_dict(), boundary.state_dict(), model.state_dict()
    assert all(torch.equal(state[k], boundary_state[k]) for k in arrays)
    assert all(torch.equal(state[k], model_state[k]) for k in state if k not in arrays)
    assert any(not torch.equal(model_state[k], boundary_state[k]) for k in arrays)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with pytest.raises(ValueError, match="holds no 'mirror-teacher' record"):
        teacher_model(model, RecordDict())


def test_phases_follow_the_config_and_idle_clients_weigh_nothing_per_modality():
    from app_config.run_config import RunConfig

    config = dataclasses.replace(RunConfig(), encoder_layout="per-modality", strategy="modality-wise",
                                 mirror_phase1_rounds=2, mirror_temperature=0.1)
    assert mirror_settings(config) == MirrorSettings(2, 0.1, "concat", 1.0, 1.0)
    assert [in_phase_two(config, r) for r in (1, 2, 3)] == [False, False, True]
    assert mirror_settings(RunConfig()) is None and not in_phase_two(RunConfig(), 7)
    idle = idle_metrics(_data([0, 1], [0]))
    assert idle["num-examples"] == 2 and idle["num-image-examples"] == idle["num-audio-examples"] == 0
    assert idle["mirror-idle"] == 1
