"""The per-modality layout: its state-dict names, and every modality's views routed through its own network."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from app_config.run_config import RunConfig
from models.factory import build_model, recipe
from models.per_modality import PerModalityModel, modality_network
from models.ssl_model import SSLModel
from ssl_method.local_training import TrainSettings, train_locally
from tests.tiny_local_data import tiny_local_data, tiny_views

CONFIG = dataclasses.replace(RunConfig(), encoder="test_resnet", projection_hidden_dim=16, projection_dim=8)
SETTINGS = TrainSettings(repopt_scales="", local_epochs=1, max_local_steps=2, batch_size=4, optimizer="sgd",
                         learning_rate=0.05, momentum=0.9, weight_decay=5e-4, temperature=0.5, objective="nt-xent",
                         barlow_lambda=0.0051, autocast="off", channels_last=False)


def test_the_default_layout_is_the_shared_network_unchanged():
    model = build_model(CONFIG)
    assert type(model) is SSLModel and model.branch("image") is model.branch("audio") is model
    assert all(name.startswith(("encoder.", "projector.")) for name in model.state_dict())


def test_per_modality_names_are_the_shared_names_under_each_prefix():
    shared = build_model(CONFIG).state_dict()
    model = build_model(dataclasses.replace(CONFIG, encoder_layout="per-modality"))
    assert isinstance(model, PerModalityModel)
    assert list(model.state_dict()) == [f"image.{k}" for k in shared] + [f"audio.{k}" for k in shared]
    assert model.branch("image") is model.image and model.branch("audio") is model.audio
    assert modality_network(model, "audio") is model.audio and modality_network(torch.nn.Identity(), "image") \
        .__class__ is torch.nn.Identity
    assert recipe(CONFIG, model) == recipe(CONFIG, model.image)
    with pytest.raises(ValueError, match="modality: unknown value 'video'"):
        model.branch("video")


@pytest.mark.parametrize(("image", "audio", "moved"), [(0, 8, {"audio"}), (8, 0, {"image"}),
                                                       (8, 8, {"image", "audio"})])
def test_training_moves_only_the_networks_of_the_held_modalities(image, audio, moved):
    torch.manual_seed(0)
    model = PerModalityModel("test_resnet", 16, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_locally(model, tiny_local_data(image, audio), tiny_views(), SETTINGS, torch.device("cpu"), seed=1)
    after = model.state_dict()
    for prefix in ("image", "audio"):
        changed = any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix + "."))
        assert changed == (prefix in moved), prefix
