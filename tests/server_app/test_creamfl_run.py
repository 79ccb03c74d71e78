"""CreamFL run in one process: the real ClientApp ``train`` answers a test double grid, the real strategy and
server side (``server_app.creamfl_server``) train; what travels, what the server does and resuming are checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, RecordDict

from app_config.run_config import RunConfig
from server_app.creamfl_server import CreamFLServer, attach_public_set
from server_app.round_loop import RoundTrain, run_rounds
from ssl_method.creamfl_training import public_representations
from strategies.registry import build_strategy
from tests.fake_grid import FakeGrid, numpy_of

NODES = [1, 2, 3]  # one visual-only, one audio-only, one audio-visual client
PUBLIC = 24


def _config(root, **over) -> RunConfig:
    return RunConfig.from_mapping({
        "encoder": "test_resnet", "projection-hidden-dim": 32, "projection-dim": 16, "strategy": "creamfl",
        "creamfl-public-size": PUBLIC, "num-server-rounds": 2, "data-root": str(root), "partitioner": "iid",
        "frac-visual-clients": 1 / 3, "frac-audio-clients": 1 / 3, "frac-audiovisual-clients": 1 / 3,
        "max-local-steps": 2, "batch-size": 8, "min-train-nodes": 3, "device": "cpu", "eval-every": 0,
        "tensorboard": False, "deterministic": True, **over})


def _initial(config: RunConfig) -> ArrayRecord:
    from models.factory import build_model

    torch.manual_seed(config.seed)
    return ArrayRecord(build_model(config).state_dict())


@pytest.fixture()
def creamfl_run(small_root, monkeypatch):
    """``run(start, rounds, arrays, states)``: rounds ``start..rounds`` with node states ``states`` (kept
    across calls, as Flower keeps a node's context); returns each round's record, models and the grid."""
    import client_app.app as client
    from client_app.worker_cache import WorkerCache

    config = _config(small_root)
    monkeypatch.setattr(client, "WORKER", WorkerCache())
    values = config.as_mapping()

    def run(start: int, rounds: int, arrays: ArrayRecord, states: dict[int, RecordDict]):
        strategy = build_strategy(config)
        attach_public_set(strategy, config, torch.device("cpu"))

        def respond(message):
            node = message.metadata.dst_node_id
            context = Context(run_id=1, node_id=node, node_config={"partition-id": node - 1, "num-partitions": 3},
                              state=states.setdefault(node, RecordDict()), run_config=values)
            return client.train(message, context)

        trains: list[RoundTrain] = []
        models: dict[int, ArrayRecord] = {}
        grid = FakeGrid(NODES, respond)
        run_rounds(strategy, grid, arrays, num_rounds=rounds, start_round=start, seed=config.seed,
                   min_replies=config.min_train_nodes, record_train=trains.append,
                   write_checkpoint=lambda r, a: models.__setitem__(r, a))
        return trains, models, grid, strategy

    return config, run


def test_representations_travel_and_the_server_model_trains(creamfl_run):
    config, run = creamfl_run
    initial = _initial(config)
    trains, models, grid, strategy = run(1, 2, initial, {})
    d = config.projection_dim
    for record in trains:
        assert record.failures == 0 and record.aggregated
        assert record.metrics["replies-aggregated"] == 3
        assert record.metrics["creamfl-clients-image"] == 2 and record.metrics["creamfl-clients-audio"] == 2
        assert np.isfinite(record.metrics["server-distill-loss"]) and np.isfinite(record.metrics["loss"])
        for reply in record.replies:  # each client's reply: (N, d) per modality it holds, nothing else
            kind = reply.content["client-info"]["kind"]
            held = {"visual": {"image"}, "audio": {"audio"}, "audiovisual": {"image", "audio"}}[kind]
            reps = numpy_of(reply.content["arrays"])
            assert set(reps) == held and all(r.shape == (PUBLIC, d) for r in reps.values())
            np.testing.assert_allclose(np.linalg.norm(reps[next(iter(held))], axis=1), 1.0, rtol=1e-5)
            assert reply.content["metrics"]["own-model"] == float(record.round > 1)
            assert reply.content["metrics"]["creamfl-regulariser"] > 0
        # bytes: the banks (2 x N x d float32) and indices (2 x N int64) down, representations up -- no weights
        bank_bytes = sum(len(a.data) for a in grid.sent[0].content["arrays"].values())
        assert record.bytes_sent == 3 * bank_bytes < 2 * (2 * PUBLIC * d * 4 + 2 * PUBLIC * 8 + 4 * 128) * 3
        assert record.bytes_received == sum(len(a.data) for r in record.replies for a in r.content["arrays"].values())
    sent = numpy_of(grid.sent[0].content["arrays"])
    assert set(sent) == {"image", "audio", "image-index", "audio-index"}
    server = strategy.rule.attached()
    np.testing.assert_array_equal(sent["image-index"], server.indices()["image"])
    changed = [name for name, value in numpy_of(models[2]).items()
               if value.dtype.kind == "f" and not np.array_equal(value, initial[name].numpy())]
    assert changed  # the global model (the server model) moved


def test_resumed_round_equals_the_uninterrupted_one(creamfl_run):
    """Nothing but the global model is needed to resume: a fresh strategy from round 1's model, with the
    clients' node states as they were, computes round 2 as the uninterrupted run did."""
    config, run = creamfl_run
    initial = _initial(config)
    states: dict[int, RecordDict] = {}
    _, first, _, _ = run(1, 1, initial, states)
    saved = {node: RecordDict({k: ArrayRecord(dict(v.items())) for k, v in s.array_records.items()})
             for node, s in states.items()}
    _, whole, _, _ = run(2, 2, first[1], states)
    _, resumed, _, strategy = run(2, 2, first[1], saved)
    assert strategy.state_dict() == {}
    for name, value in numpy_of(whole[2]).items():
        np.testing.assert_array_equal(numpy_of(resumed[2])[name], value, err_msg=name)


def test_server_step_moves_its_public_representations_towards_the_ensemble(small_root):
    config = _config(small_root, **{"creamfl-kd-weight": 5.0})
    initial = _initial(config)
    server = CreamFLServer(config, torch.device("cpu"))
    banks = server.banks(initial)
    rng = np.random.default_rng(0)
    replies = {m: [v / np.linalg.norm(v, axis=1, keepdims=True)
                   for v in (rng.normal(size=(PUBLIC, config.projection_dim)).astype(np.float32) for _ in range(2))]
               for m in ("image", "audio")}
    from ssl_method.creamfl import aggregate_representations

    targets = {m: aggregate_representations(replies[m], banks["audio" if m == "image" else "image"]).aggregate
               for m in replies}

    def distance(kd_weight: float) -> float:
        server.config = _config(small_root, **{"creamfl-kd-weight": kd_weight})
        model, _ = server.distil(1, initial, replies, banks, 0.1)
        server.model.load_state_dict(model.to_torch_state_dict())
        total = 0.0
        for m in replies:
            reps = public_representations(server.model, server.public.samples[m], server.transforms[m], server.device)
            total += float(((reps - targets[m]) ** 2).mean())
        return total

    assert distance(5.0) < distance(0.0)  # same seeds and own SSL pass; only the distillation differs
