"""ModalityMirror run in one process: the real ClientApp ``train`` answers a test double grid, the real
strategy aggregates; each round's aggregate is checked against what the replies hand-compute to."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, RecordDict

from app_config.modalities import AUDIOVISUAL
from app_config.run_config import RunConfig
from server_app.checkpoint import (
    Checkpoint,
    capture_strategy_state,
    load_checkpoint,
    restore_strategy_state,
    save_checkpoint,
)
from server_app.round_loop import RoundTrain, run_rounds
from strategies.mirror_phases import TEACHER_KEY
from strategies.registry import build_strategy
from tests.fake_grid import FakeGrid, numpy_of

NODES = [1, 2, 3, 4]  # one visual-only, one audio-only, two audio-visual clients


def _config(root) -> RunConfig:
    return RunConfig.from_mapping({
        "encoder": "test_resnet", "projection-hidden-dim": 32, "projection-dim": 16, "encoder-layout": "per-modality",
        "strategy": "modality-wise", "mirror-phase1-rounds": 1, "num-server-rounds": 3, "data-root": str(root),
        "partitioner": "iid", "frac-visual-clients": 0.25, "frac-audio-clients": 0.25,
        "frac-audiovisual-clients": 0.5, "max-local-steps": 1, "batch-size": 8, "min-train-nodes": 4,
        "weight-cap-factor": 0.0, "update-norm-cap-factor": 0.0, "device": "cpu", "eval-every": 0,
        "tensorboard": False})


@pytest.fixture()
def mirror_run(small_root, monkeypatch):
    """``run(start, rounds, arrays, strategy)``: rounds ``start..rounds``; returns what each round sent,
    received and left as the global model."""
    import client_app.app as client
    from client_app.worker_cache import WorkerCache

    config = _config(small_root)
    monkeypatch.setattr(client, "WORKER", WorkerCache())
    values = config.as_mapping()

    def respond(message):
        node = message.metadata.dst_node_id
        context = Context(run_id=1, node_id=node, node_config={"partition-id": node - 1, "num-partitions": 4},
                          state=RecordDict(), run_config=values)
        return client.train(message, context)

    def run(start: int, rounds: int, arrays: ArrayRecord, strategy) -> tuple[list[RoundTrain], dict, FakeGrid]:
        trains: list[RoundTrain] = []
        models: dict[int, ArrayRecord] = {}
        grid = FakeGrid(NODES, respond)
        run_rounds(strategy, grid, arrays, num_rounds=rounds, start_round=start, seed=config.seed,
                   min_replies=config.min_train_nodes, record_train=trains.append,
                   write_checkpoint=lambda r, a: models.__setitem__(r, a))
        return trains, models, grid

    return config, run


def _initial(config: RunConfig) -> ArrayRecord:
    import torch

    from models.factory import build_model

    torch.manual_seed(config.seed)
    return ArrayRecord(build_model(config).state_dict())


def _weighted_mean(replies, prefix: str, count_key: str) -> dict[str, np.ndarray]:
    """The hand computation: ``prefix``'s float arrays averaged over the replies weighted by ``count_key``."""
    weights = [float(r.content["metrics"][count_key]) for r in replies]
    arrays = [numpy_of(r.content["arrays"]) for r in replies]
    return {name: sum(w * a[name].astype(np.float64) for w, a in zip(weights, arrays)) / sum(weights)
            for name in arrays[0] if name.startswith(prefix) and arrays[0][name].dtype.kind == "f"}


def _part(record: ArrayRecord, prefix: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in numpy_of(record).items() if k.startswith(prefix)}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], err_msg=name, **tolerance)


def test_phase_one_then_two_move_only_what_the_method_says(mirror_run, tmp_path):
    config, run = mirror_run
    initial = _initial(config)
    strategy = build_strategy(config)
    trains, models, grid = run(1, 2, initial, strategy)

    # round 1, phase 1: each encoder is the mean over the clients holding its modality; no teacher is sent
    phase1 = trains[0]
    assert phase1.failures == 0 and phase1.aggregated and phase1.metrics["mirror-phase"] == 1
    assert all(TEACHER_KEY not in m.content.array_records for m in grid.sent[:4])
    kinds = {r.content["client-info"]["kind"] for r in phase1.replies}
    assert kinds == {"visual", "audio", AUDIOVISUAL}
    for reply in phase1.replies:  # a client never changes the encoder of a modality it lacks
        metrics = reply.content["metrics"]
        for modality in ("image", "audio"):
            if metrics[f"num-{modality}-examples"] == 0:
                _assert_same(_part(reply.content["arrays"], f"{modality}."), _part(initial, f"{modality}."))
    for modality in ("image", "audio"):
        holders = [r for r in phase1.replies if r.content["metrics"][f"num-{modality}-examples"] > 0]
        assert len(holders) == 3 and phase1.metrics[f"modality-wise-clients-{modality}"] == 3
        expected = _weighted_mean(holders, f"{modality}.", f"num-{modality}-examples")
        got = {k: v for k, v in _part(models[1], f"{modality}.").items() if k in expected}
        _assert_same(got, expected, rtol=1e-5, atol=1e-6)

    # round 2, phase 2: the teacher (the audio encoder after round 1) travels beside the model; only
    # audio-visual clients train; the image encoder stays as at the phase boundary
    phase2 = trains[1]
    assert phase2.failures == 0 and phase2.aggregated and phase2.metrics["mirror-phase"] == 2
    sent = grid.sent[4:]
    teacher = numpy_of(sent[0].content[TEACHER_KEY])
    assert teacher and all(k.startswith("audio.encoder.") for k in teacher)
    _assert_same(teacher, {k: v for k, v in _part(models[1], "audio.").items() if k in teacher})
    boundary_bytes = sum(a.numpy().nbytes for a in models[1].values())
    teacher_bytes = sum(v.nbytes for v in teacher.values())
    assert boundary_bytes * 4 < phase2.bytes_sent <= (boundary_bytes + teacher_bytes) * 4 * 1.01
    trained = [r for r in phase2.replies if r.content["client-info"]["kind"] == AUDIOVISUAL]
    idle = [r for r in phase2.replies if r.content["client-info"]["kind"] != AUDIOVISUAL]
    assert len(trained) == 2 and len(idle) == 2
    assert all(r.content["metrics"]["mirror-idle"] == 1 for r in idle)
    for reply in idle:  # replied the global model untouched
        _assert_same(numpy_of(reply.content["arrays"]), numpy_of(models[1]))
    for reply in trained:
        assert reply.content["metrics"]["num-image-examples"] == 0 and reply.content["metrics"]["steps"] == 1
        assert "loss-distill" in reply.content["metrics"]
    _assert_same(_part(models[2], "image."), _part(models[1], "image."))
    expected = _weighted_mean(trained, "audio.", "num-audio-examples")
    _assert_same({k: v for k, v in _part(models[2], "audio.").items() if k in expected}, expected,
                 rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(models[2][k].numpy(), models[1][k].numpy()) for k in expected)

    # the checkpoint keeps the teacher: a run resumed after round 2 distils from the same one in round 3
    save_checkpoint(tmp_path, Checkpoint(round=2, arrays=models[2], strategy_name=config.strategy,
                                         strategy_state=capture_strategy_state(strategy)))
    saved = load_checkpoint(tmp_path)
    resumed = build_strategy(config)
    restore_strategy_state(resumed, saved.strategy_state)
    trains3, models3, grid3 = run(3, 3, saved.arrays, resumed)
    _assert_same(numpy_of(grid3.sent[0].content[TEACHER_KEY]), teacher)
    assert trains3[0].metrics["mirror-phase"] == 2
    _assert_same(_part(models3[3], "image."), _part(models[1], "image."))
