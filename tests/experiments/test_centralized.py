"""Centralized baseline: the same sample budget as the federated clients, in the run-folder format."""

import json

import pytest
import torch
import torch.nn as nn

from app_config.run_config import RunConfig
from data_partition.federation import federation_part
from experiments import centralized_training as central
from models import factory
from ssl_method.local_training import train_locally, train_settings


class Counting(nn.Module):
    """Wraps a view pipeline; counts the samples it was given (two views per sample)."""

    def __init__(self, inner: nn.Module, tally: dict, modality: str) -> None:
        super().__init__()
        self.inner, self.tally, self.modality = inner, tally, modality

    def forward(self, batch):
        self.tally[self.modality] = self.tally.get(self.modality, 0) + len(batch) / 2
        return self.inner(batch)


def counting_views(config, tally):
    return {m: Counting(v, tally, m) for m, v in factory.training_views(config, torch.device("cpu")).items()}


@pytest.fixture(scope="module")
def config(data_root):
    return RunConfig(encoder="test_resnet", projection_hidden_dim=16, projection_dim=8, batch_size=8,
                     max_local_steps=3, num_server_rounds=2, eval_every=0, save_every=1, seed=3,
                     data_root=str(data_root), tensorboard=False)


NUM_CLIENTS = 5


def test_round_schedule_spends_exactly_the_budget():
    for budget in ({"image": 100, "audio": 37}, {"image": 64, "audio": 64}, {"image": 0, "audio": 41},
                   {"image": 9, "audio": 0}, {"image": 33, "audio": 3}, {"image": 17, "audio": 2}):
        calls = central.round_schedule(budget, batch_size=8)
        for m in ("image", "audio"):
            assert sum(c.samples(m) for c in calls) == budget[m]
        assert all(2 <= c.batch_size <= 8 for c in calls)
    # full batches of both modalities are trained together, as an audio-visual client does
    assert central.round_schedule({"image": 40, "audio": 24}, 8) == [
        central.Call(("image", "audio"), 3, 8), central.Call(("image",), 2, 8)]
    # a one-sample remainder is merged with a full batch: 8 + 1 -> 4 + 5
    assert central.round_schedule({"image": 17, "audio": 0}, 8) == [
        central.Call(("image",), 1, 8), central.Call(("image",), 1, 4), central.Call(("image",), 1, 5)]
    assert central.round_schedule({"image": 1, "audio": 0}, 8) == []  # a single sample cannot form a pair


@pytest.fixture(scope="module")
def federated_rounds(config):
    """Every client's real local training for two rounds (as the ClientApp runs it), samples counted."""
    processed = {"image": 0, "audio": 0}
    records = []
    for server_round in (1, 2):
        clients = []
        for pid in range(NUM_CLIENTS):
            part, data = federation_part(config, pid, NUM_CLIENTS)
            model = factory.build_model(config)
            out = train_locally(model, data, counting_views(config, processed), train_settings(config, model),
                                torch.device("cpu"), seed=pid)
            clients.append({"partition-id": pid, "kind": part.kind, **out})
        records.append({"round": server_round, "clients": clients})
    return records, processed


def test_planned_budget_equals_what_the_clients_process(config, federated_rounds):
    _, processed = federated_rounds
    planned = central.planned_budget(config, NUM_CLIENTS)
    assert len(planned) == 2
    for m in ("image", "audio"):
        assert sum(r[m] for r in planned) == processed[m] > 0


def test_budget_from_a_federated_runs_metrics(config, federated_rounds, tmp_path):
    records, processed = federated_rounds
    lines = [{"round": 0, "eval": {}}] + json.loads(json.dumps(records))
    lines[1]["clients"].append({"node-id": 1, "error": "client crashed"})  # failed replies spent nothing
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    budget = central.budget_from_metrics(tmp_path / "metrics.jsonl", config.batch_size)
    assert budget == central.planned_budget(config, NUM_CLIENTS)
    assert [sum(r[m] for r in budget) for m in ("image", "audio")] == [processed["image"], processed["audio"]]
    assert central.recorded_partitions(tmp_path / "metrics.jsonl") == NUM_CLIENTS


@pytest.mark.parametrize("method", ["centralized", "supervised"])
def test_centralized_run_processes_the_federated_budget(config, tmp_path, monkeypatch, method):
    from server_app.central_eval import CentralEvaluator

    # the central evaluation is the ServerApp's own (tested elsewhere); a stub keeps this test fast
    monkeypatch.setattr(CentralEvaluator, "__call__", lambda self, arrays: {"knn-image": 0.5, "probe-audio": 0.25})
    seen = {"image": 0, "audio": 0}
    original = factory.training_views
    monkeypatch.setattr(factory, "training_views",
                        lambda cfg, device: {m: Counting(v, seen, m) for m, v in original(cfg, device).items()})
    budget = central.planned_budget(config, NUM_CLIENTS)
    pooled = central.pooled_data(config, NUM_CLIENTS)
    sizes = [federation_part(config, pid, NUM_CLIENTS)[1] for pid in range(NUM_CLIENTS)]
    for m in ("image", "audio"):
        assert pooled.count(m) == sum(d.count(m) for d in sizes) == len(pooled.labels[m])
    folder = central.train_centralized(config, budget, pooled, tmp_path / "runs", "plan", method=method)
    for m in ("image", "audio"):
        assert seen[m] == sum(r[m] for r in budget)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["method"] == method
    assert summary["samples-processed"] == summary["sample-budget"] == {m: sum(r[m] for r in budget)
                                                                        for m in ("image", "audio")}
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert "eval" in records[0] and "eval" in records[2] and "eval" not in records[1]
    assert records[1]["train"]["samples-image"] == budget[0]["image"]
    for name in ("config.json", "final_model.pt", "round-0000.pt", "round-0001.pt", "round-0002.pt"):
        assert (folder / name).exists(), name
    assert json.loads((folder / "config.json").read_text())["encoder"] == "test_resnet"
    # the saved model is a loadable SSLModel state dict, as the ServerApp writes
    factory.build_model(config).load_state_dict(torch.load(folder / "final_model.pt", weights_only=True))


def test_the_supervised_ceiling_learns_the_labels_with_the_trainers_views_and_steps(config):
    """Two classes of images told apart only by their labels' pattern (dark vs bright): cross-entropy on both
    views learns them; the same settings give as many steps and samples as the contrastive trainer."""
    from dataclasses import replace

    from data_partition.client_data import LocalData
    from experiments.supervised_ceiling import classifiers, train_supervised

    torch.manual_seed(0)
    labels = torch.arange(64) % 2
    images = (labels[:, None, None, None] * 200 + torch.randint(0, 40, (64, 32, 32, 3))).to(torch.uint8)
    data = LocalData({"image": images}, {"image": labels})
    model = factory.build_model(config)
    heads = classifiers(model, {"image": 2})
    views = factory.training_views(config, torch.device("cpu"))
    settings = replace(train_settings(config, model), max_local_steps=20, local_epochs=10, learning_rate=0.05)
    first = train_supervised(model, heads, data, views, replace(settings, max_local_steps=1), torch.device("cpu"), 0)
    out = train_supervised(model, heads, data, views, settings, torch.device("cpu"), 1)
    assert out["loss-image"] < 0.5 * first["loss-image"] and out["loss-audio"] == 0.0
    ssl = train_locally(factory.build_model(config), LocalData({"image": images}), views, settings,
                        torch.device("cpu"), 1)
    assert out["steps"] == ssl["steps"] == 20 and out["samples"] == ssl["samples"]
    with pytest.raises(ValueError, match="nothing to train on"):
        train_supervised(model, heads, LocalData({"image": images[:1]}, {"image": labels[:1]}), views, settings,
                         torch.device("cpu"), 0)
