"""The ServerApp's run recorder and sampling, without a Flower run: hooks called as run_rounds calls them."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from app_config.run_config import RunConfig
from server_app.checkpoint import load_checkpoint
from server_app.round_loop import RoundTrain
from server_app.run_output import RunOutput
from server_app.run_recorder import RunRecorder
from server_app.run_start import RunStart, resume_or_create
from strategies.registry import STRATEGIES, make_strategy
from strategies.rule_strategy import RuleStrategy
from strategies.seeded_sampling import SeededSampling, round_seed
from tests.fake_grid import FakeGrid, arrays_of, error_reply, instruction, train_reply


def weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(3, value, np.float32)}


def recorder(tmp_path, evaluated: list, **overrides) -> RunRecorder:
    config = RunConfig(num_server_rounds=3, eval_every=2, save_every=2, checkpoint_every=2, tensorboard=False,
                       **overrides)
    ticks = iter(range(100))
    return RunRecorder(config, RunOutput.create(str(tmp_path), config, run_id=7), make_strategy("fedavg"),
                       lambda arrays: evaluated.append(arrays) or {"knn-image": 0.5}, flower_run_id=7,
                       clock=lambda: float(next(ticks)))


def test_rounds_are_recorded_evaluated_saved_and_checkpointed_on_schedule(tmp_path, capsys):
    evaluated: list = []
    rec = recorder(tmp_path, evaluated)
    arrays = arrays_of(weights(1.0))
    assert rec.evaluate_and_record(0, arrays) is not None  # round 0 always evaluates
    for server_round in (1, 2, 3):
        sent = [instruction(node) for node in (1, 2)]
        replies = [train_reply(sent[0], weights(2.0), {"loss": 2.0}), error_reply(sent[1])]
        aggregated = MetricRecord({"loss-image": 1.5, "loss-audio": 0.5, "clients": 1.0})
        rec.record_train(RoundTrain(server_round, 3, replies, [9], aggregated))
        rec.evaluate_and_record(server_round, arrays)
        rec.write_checkpoint(server_round, arrays)
    records = [json.loads(line) for line in rec.output.metrics_file.read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert ["eval" in r for r in records] == [True, False, True, True] and len(evaluated) == 3
    assert records[1]["failures"] == 2 and records[1]["sent"] == 3 and records[1]["no-reply"] == 1
    assert [c["node-id"] for c in records[1]["clients"]] == [1, 2, 9]
    assert [r["round-seconds"] for r in records] == [1.0, 1.0, 1.0, 1.0]
    assert sorted(p.name for p in rec.output.folder.glob("round-*.pt")) == ["round-0000.pt", "round-0002.pt"]
    saved = load_checkpoint(rec.output.folder)
    assert saved.round == 3 and [r["round"] for r in saved.history] == [0, 1, 2, 3]
    assert saved.run_config == rec.config.as_mapping() and saved.meta["flower-run-id"] == 7
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[fssuavl] round")]
    assert lines[1] == ("[fssuavl] round   1 | loss img 1.500 aud 0.500 | 1 clients | 1.0s"
                        " | 3 sent, 2 replies, 2 failed: ClientApp raised")


def test_finish_writes_the_final_model_and_summary(tmp_path):
    from flwr.serverapp.strategy import Result

    rec = recorder(tmp_path, [])
    result = Result()
    result.evaluate_metrics_serverapp.update({0: {"knn-image": 0.1, "floor-knn-image": 0.7},
                                              3: {"knn-image": 0.9}})
    summary = rec.finish(result, arrays_of(weights(4.0)))
    assert summary["initial-knn-image"] == 0.1 and summary["final-knn-image"] == 0.9
    assert summary["floor-knn-image"] == 0.7 and "initial-floor-knn-image" not in summary
    assert json.loads((rec.output.folder / "summary.json").read_text()) == summary
    assert (rec.output.folder / "final_model.pt").exists()


def test_task_aware_selection_keeps_the_best_model_per_task_and_survives_a_resume(tmp_path):
    import torch
    from flwr.serverapp.strategy import Result

    scores = iter([{"knn-image": 0.2, "probe-audio": 0.3, "floor-knn-image": 0.9},   # round 0: not selected
                   {"knn-image": 0.5, "probe-audio": 0.4}, {"knn-image": 0.4, "probe-audio": 0.6},
                   {"knn-image": 0.5, "probe-audio": 0.1}])
    config = RunConfig(num_server_rounds=3, eval_every=1, keep_best_models=True, tensorboard=False)
    output = RunOutput.create(str(tmp_path), config, run_id=7)
    rec = RunRecorder(config, output, make_strategy("fedavg"), lambda arrays: next(scores), flower_run_id=7)
    for server_round in range(4):
        rec.evaluate_and_record(server_round, arrays_of(weights(float(server_round))))
    folder = rec.output.folder
    assert torch.load(folder / "best-knn-image.pt")["w"].tolist() == [1.0] * 3   # round 1; round 3 only ties
    assert torch.load(folder / "best-probe-audio.pt")["w"].tolist() == [2.0] * 3
    assert not (folder / "best-floor-knn-image.pt").exists()
    records = [json.loads(line) for line in rec.output.metrics_file.read_text().splitlines()]
    assert [r.get("best-for") for r in records] == [None, ["knn-image", "probe-audio"], ["probe-audio"], None]
    selected = rec.finish(Result(), arrays_of(weights(3.0)))["selected-models"]
    assert {t: (e["round"], e["value"]) for t, e in selected.items()} == {"knn-image": (1, 0.5),
                                                                           "probe-audio": (2, 0.6)}
    assert all("labelled" in e["selection"] for e in selected.values())
    # A resumed run knows the best so far from its history and only saves what beats it.
    resumed = RunRecorder(config, output, make_strategy("fedavg"), lambda arrays: {"knn-image": 0.45,
                                                                                   "probe-audio": 0.7},
                          history=records[:3])
    resumed.evaluate_and_record(3, arrays_of(weights(9.0)))
    assert torch.load(folder / "best-knn-image.pt")["w"].tolist() == [1.0] * 3
    assert torch.load(folder / "best-probe-audio.pt")["w"].tolist() == [9.0] * 3


def test_without_the_key_no_model_is_selected(tmp_path):
    rec = recorder(tmp_path, [])
    for server_round in range(3):
        rec.evaluate_and_record(server_round, arrays_of(weights(1.0)))
    assert list(rec.output.folder.glob("best-*.pt")) == []


def test_a_skipped_evaluation_is_recorded_with_its_reason_and_the_run_goes_on(tmp_path, capsys):
    from server_app.central_eval import EvaluationSkipped

    config = RunConfig(num_server_rounds=1, tensorboard=False)

    def stalled(arrays):
        raise EvaluationSkipped("did not finish within eval-timeout=5s; the run goes on without central evaluation")

    rec = RunRecorder(config, RunOutput.create(str(tmp_path), config, run_id=7), make_strategy("fedavg"), stalled)
    assert rec.evaluate_and_record(0, arrays_of(weights(1.0))) is None
    record = json.loads(rec.output.metrics_file.read_text().splitlines()[0])
    assert "eval" not in record and record["eval-skipped"].startswith("did not finish within eval-timeout=5s")
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[fssuavl] round")][0]
    assert line.endswith("| eval skipped: did not finish within eval-timeout=5s; the run goes on without central "
                         "evaluation")


def test_a_run_that_aggregated_nothing_fails_loudly(tmp_path, capsys):
    from flwr.serverapp.strategy import Result

    from server_app.run_recorder import NothingTrained

    rec = recorder(tmp_path, [])
    arrays = arrays_of(weights(1.0))
    rec.evaluate_and_record(0, arrays)
    reason = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() ... "
              "PartitionError: audio: 900 samples cannot give 600 clients at least 2 each'>")
    for server_round in (1, 2, 3):
        sent = [instruction(node) for node in (1, 2)]
        rec.record_train(RoundTrain(server_round, 2, [error_reply(m, reason) for m in sent], [], None,
                                    skipped="0 successful replies, fewer than the minimum 2"))
        rec.evaluate_and_record(server_round, arrays)
    with pytest.raises(NothingTrained, match="no round aggregated any reply \\(6 of 6 train messages failed\\)"):
        rec.finish(Result(), arrays)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[fssuavl] round   1")][0]
    assert line.endswith("| 2 sent, 2 replies, 2 failed: PartitionError: audio: 900 samples cannot give 600 "
                         "clients at least 2 each (not aggregated: 0 successful replies, fewer than the minimum 2)")
    assert (rec.output.folder / "summary.json").exists()  # the record is still written


def test_more_than_half_failed_is_said_in_the_last_line(tmp_path, capsys):
    from flwr.serverapp.strategy import Result

    rec = recorder(tmp_path, [])
    arrays = arrays_of(weights(1.0))
    sent = [instruction(node) for node in (1, 2, 3)]
    replies = [train_reply(sent[0], weights(2.0), {"loss": 2.0}), error_reply(sent[1]), error_reply(sent[2])]
    rec.record_train(RoundTrain(1, 3, replies, [], MetricRecord({"clients": 1.0}), aggregated=True))
    rec.evaluate_and_record(1, arrays)
    summary = rec.finish(Result(), arrays)
    assert summary["train-messages-failed"] == 2 and summary["rounds-aggregated"] == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "[fssuavl] warning: 2 of 3 train messages failed (more than half); see the round lines above")


def test_resume_or_create_restores_and_cuts_back(tmp_path):
    evaluated: list = []
    rec = recorder(tmp_path, evaluated)
    arrays = arrays_of(weights(1.0))
    for server_round in (0, 1, 2, 3):
        rec.evaluate_and_record(server_round, arrays)
    rec.write_checkpoint(2, arrays)
    config = RunConfig(num_server_rounds=3, eval_every=2, save_every=2, checkpoint_every=2, tensorboard=False,
                       resume_from=str(rec.output.folder))
    start = resume_or_create(config, 8, load_checkpoint(rec.output.folder), make_strategy("fedavg"))
    assert start.start_round == 3 and start.resumed_after == 2 and start.output.folder == rec.output.folder
    assert [json.loads(line)["round"] for line in rec.output.metrics_file.read_text().splitlines()] == [0, 1, 2]
    assert sorted(start.result().evaluate_metrics_serverapp) == [0, 2]
    fresh = RunStart(rec.output)
    assert fresh.start_round == 1 and fresh.arrays(arrays) is arrays and not len(fresh.result().arrays)


# ----------------------------------------------------------------------------------- node sampling
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_samples_with_its_own_rng(name):
    from flwr.serverapp.strategy import FedAvg

    strategy = make_strategy(name)
    assert isinstance(strategy, RuleStrategy)  # the one shell every rule runs in
    mro = type(strategy).__mro__
    assert mro.index(SeededSampling) == mro.index(FedAvg) - 1  # sampling never reaches Flower's FedAvg


def test_sampling_repeats_per_seed_and_round_whatever_the_global_random_module_does():
    common = {"fraction_train": 0.3, "min_train_nodes": 1, "min_available_nodes": 1, "fraction_evaluate": 0.0}
    nodes = list(range(1, 21))

    def sampled(seed: int, server_round: int) -> list[int]:
        strategy = make_strategy("fedavg", common=common)
        strategy.sampling_seed = seed
        random.seed(server_round * 31 + seed)  # other users of the global module do not matter
        messages = strategy.configure_train(server_round, arrays_of(weights(0.0)), ConfigRecord(), FakeGrid(nodes, None))
        return [m.metadata.dst_node_id for m in messages]

    first = sampled(5, 2)
    assert first == sampled(5, 2) and len(first) == 6
    assert first == random.Random(round_seed(5, 2)).sample(nodes, 6)  # the draws the global reseeding made before
    assert sampled(5, 3) != first
