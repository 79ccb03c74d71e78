"""Clients that keep their own projection head (FedVSSL's partial update, FASSL's encoder-only transmission)."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, RecordDict

from app_config.run_config import RunConfig
from client_app.partial_update import STATE_KEY, initial_head, keep_head, keeps_own_head, load_global, without_head
from server_app.encoder_only import ModelParts


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 2)
        self.projector = torch.nn.Linear(2, 2)


def test_partial_update_loads_the_encoder_and_keeps_the_clients_own_head():
    assert keeps_own_head(RunConfig(strategy="fedvssl")) and not keeps_own_head(RunConfig(strategy="fedavg"))
    assert not keeps_own_head(RunConfig(strategy="fedvssl", fedvssl_partial_update=False))
    model, state = _Tiny(), RecordDict()
    global_model = _Tiny()
    global_arrays = ArrayRecord(global_model.state_dict())
    assert load_global(model, global_arrays, state) is False  # round 1: nothing of its own yet
    assert torch.equal(model.projector.weight, global_model.projector.weight)
    with torch.no_grad():
        model.projector.weight.add_(1.0)
        model.encoder.weight.add_(1.0)
    keep_head(model, state)
    assert STATE_KEY in state.array_records
    own = model.projector.weight.clone()
    assert load_global(model, global_arrays, state) is True
    assert torch.equal(model.encoder.weight, global_model.encoder.weight)
    assert torch.equal(model.projector.weight, own)
    # A stored head of other shapes (another architecture) is not used.
    state[STATE_KEY] = ArrayRecord({"projector.weight": torch.zeros(5, 5), "projector.bias": torch.zeros(5)})
    assert load_global(model, global_arrays, state) is False
    assert torch.equal(model.projector.weight, global_model.projector.weight)


def test_keeps_own_head_for_either_method():
    assert keeps_own_head(RunConfig(send_encoder_only=True))


def test_an_encoder_only_global_model_takes_the_seeded_head_until_the_client_has_its_own():
    model, state, global_model = _Tiny(), RecordDict(), _Tiny()
    encoder_only = without_head(ArrayRecord(global_model.state_dict()))
    assert list(encoder_only.keys()) == ["encoder.weight", "encoder.bias"]
    seeded = {k: torch.full_like(v, 0.5) for k, v in global_model.state_dict().items() if k.startswith("projector.")}
    assert load_global(model, encoder_only, state, seeded) is False
    assert torch.equal(model.projector.weight, seeded["projector.weight"])
    assert torch.equal(model.encoder.weight, global_model.encoder.weight)
    with torch.no_grad():
        model.projector.bias.add_(2.0)
    keep_head(model, state)
    assert load_global(model, encoder_only, state, seeded) is True
    assert torch.equal(model.projector.bias, seeded["projector.bias"] + 2.0)
    with pytest.raises(ValueError, match="no projection head"):
        load_global(_Tiny(), encoder_only, None, None)


def test_the_seeded_initial_head_is_the_servers():
    config = RunConfig(encoder="test_resnet", projection_hidden_dim=16, projection_dim=8, seed=5)
    from models.factory import build_model

    torch.manual_seed(5)  # as the ServerApp builds its initial model
    server = build_model(config).state_dict()
    torch.manual_seed(123)
    head = initial_head(config)
    assert head and all(torch.equal(head[k], server[k]) for k in head)
    torch.manual_seed(9)  # building the head leaves the caller's random stream alone
    expected = torch.rand(3)
    torch.manual_seed(9)
    initial_head(config)
    assert torch.equal(torch.rand(3), expected)


def test_the_server_sends_the_encoder_and_records_the_whole_model():
    model = ArrayRecord(_Tiny().state_dict())
    parts = ModelParts(True, model)
    sent = parts.sent(model)
    assert list(sent.keys()) == ["encoder.weight", "encoder.bias"]
    assert set(parts.whole(sent).keys()) == set(model.keys())
    seen = []
    parts.on_whole(lambda r, a: seen.append((r, set(a.keys()))))(3, sent)
    assert seen == [(3, set(model.keys()))]
    off = ModelParts(False, model)
    assert off.sent(model) is model and off.whole(model) is model
