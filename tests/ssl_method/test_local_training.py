"""The local trainer branches on the client's modality, through one shared encoder."""

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from models.ssl_model import SSLModel
from ssl_method.local_training import TrainSettings, train_locally
from tests.tiny_local_data import tiny_local_data, tiny_views


class Recorder(nn.Module):
    """A view pipeline that records every batch it is asked to augment."""

    def __init__(self, make_view):
        super().__init__()
        self.make_view = make_view
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        return self.make_view(batch)


def _views():
    return {modality: Recorder(view) for modality, view in tiny_views().items()}


SETTINGS = TrainSettings(repopt_scales="", local_epochs=1, max_local_steps=0, batch_size=4, optimizer="sgd", learning_rate=0.01,
                         momentum=0.9, weight_decay=5e-4, temperature=0.5, objective="nt-xent", barlow_lambda=0.0051,
                         autocast="off", channels_last=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SSLModel("resnet18_cifar", 32, 16)


def test_audio_only_client_never_touches_image_pipeline(model):
    views = _views()
    metrics = train_locally(model, tiny_local_data(0, 12), views, SETTINGS, torch.device("cpu"), seed=0)
    assert views["image"].calls == 0
    assert views["audio"].calls == 2 * 3  # two views per step, 12 // 4 steps
    assert metrics["loss-image"] == 0 and metrics["loss-audio"] > 0
    assert metrics["num-image-examples"] == 0 and metrics["num-audio-examples"] == 12


def test_visual_only_client_never_touches_audio_pipeline(model):
    views = _views()
    metrics = train_locally(model, tiny_local_data(8, 0), views, SETTINGS, torch.device("cpu"), seed=0)
    assert views["audio"].calls == 0 and views["image"].calls == 2 * 2
    assert metrics["loss-audio"] == 0 and metrics["loss-image"] > 0


def test_audiovisual_client_sums_both_losses_through_the_same_encoder(model):
    views = _views()
    metrics = train_locally(model, tiny_local_data(8, 16), views, SETTINGS, torch.device("cpu"), seed=0)
    steps = 16 // 4  # epochs run over the larger modality; the smaller one cycles
    assert views["image"].calls == views["audio"].calls == 2 * steps
    assert metrics["loss"] == pytest.approx(metrics["loss-image"] + metrics["loss-audio"])


def test_training_changes_the_shared_encoder_and_max_steps_caps_work(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    views = _views()
    settings = TrainSettings(repopt_scales="", local_epochs=5, max_local_steps=2, batch_size=4, optimizer="sgd", learning_rate=0.01,
                             momentum=0.9, weight_decay=5e-4, temperature=0.5, objective="nt-xent", barlow_lambda=0.0051,
                         autocast="off", channels_last=False)
    metrics = train_locally(model, tiny_local_data(40, 40), views, settings, torch.device("cpu"), seed=1)
    assert metrics["steps"] == 2
    assert not torch.equal(before["encoder.conv1.weight"], model.state_dict()["encoder.conv1.weight"])


def test_client_without_two_samples_of_any_modality_is_an_error(model):
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        train_locally(model, tiny_local_data(1, 1), _views(), SETTINGS, torch.device("cpu"), seed=0)


def test_bf16_autocast_and_channels_last_train_with_finite_losses_and_usual_layout(autocast="bf16",
                                                                                    channels_last=True):
    torch.manual_seed(0)
    reference, fast = SSLModel("resnet18_half_cifar", 32, 16), SSLModel("resnet18_half_cifar", 32, 16)
    fast.load_state_dict(reference.state_dict())
    settings = dataclasses.replace(SETTINGS, max_local_steps=2, autocast=autocast, channels_last=channels_last)
    data = tiny_local_data(8, 8)
    base = train_locally(reference, data, _views(), dataclasses.replace(SETTINGS, max_local_steps=2),
                         torch.device("cpu"), seed=3)
    got = train_locally(fast, data, _views(), settings, torch.device("cpu"), seed=3)
    for key in ("loss-image", "loss-audio"):
        assert math.isfinite(got[key]) and got[key] == pytest.approx(base[key], rel=0.05)
    for name, tensor in fast.state_dict().items():
        assert tensor.shape == reference.state_dict()[name].shape and tensor.dtype == reference.state_dict()[name].dtype
        assert tensor.is_contiguous(), name  # replies keep the usual memory layout
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
        x = torch.rand(2, 3, 32, 32)
        assert fast(x).shape == reference(x).shape == (2, 16)


def test_barlow_twins_trains_through_the_same_trainer():
    """The objective key reaches the step: the same model, data and seed give another loss under Barlow Twins."""
    def run(settings):
        torch.manual_seed(0)
        return train_locally(SSLModel("resnet18_cifar", 32, 16), tiny_local_data(8, 0), _views(), settings,
                             torch.device("cpu"), seed=3)

    base = run(SETTINGS)
    other = run(dataclasses.replace(SETTINGS, objective="barlow-twins"))
    assert math.isfinite(other["loss-image"]) and other["loss-image"] != pytest.approx(base["loss-image"])
    assert base["loss-image"] == pytest.approx(run(SETTINGS)["loss-image"])  # the difference is the objective's
