"""Bad client replies are excluded and counted, never averaged in; all-bad rounds keep the model."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from strategies.registry import STRATEGIES, make_strategy
from strategies.reply_filter import array_spec, filter_replies
from tests.fake_grid import (
    FakeGrid,
    arrays_of,
    error_reply,
    instruction,
    numpy_of,
    train_reply,
)
from tests.strategies.replies import global_weights
from tests.strategies.replies import honest as good

ALL = sorted(set(STRATEGIES) - {"creamfl"})  # creamfl replies with representations, not weights: tests/strategies/test_creamfl_strategy.py
COUNTS = ("replies-failed", "replies-dropped-metrics", "replies-dropped-shape", "replies-dropped-nonfinite")




def common(n: int) -> dict:
    return {"fraction_evaluate": 0.0, "min_train_nodes": n, "min_available_nodes": n}


BAD = {
    # node: (category counted, how the reply is broken)
    4: ("replies-dropped-nonfinite", lambda to: train_reply(to, {**good(4), "w": np.array([[np.nan, 1], [1, 1]], np.float32)})),
    5: ("replies-dropped-nonfinite", lambda to: train_reply(to, {**good(5), "b": np.array([0, np.inf, 0], np.float32)})),
    6: ("replies-dropped-shape", lambda to: train_reply(to, {**good(6), "b": np.zeros(4, np.float32)})),
    7: ("replies-dropped-shape", lambda to: train_reply(to, {k: v for k, v in good(7).items() if k != "b"})),
    8: ("replies-dropped-shape", lambda to: train_reply(to, {**good(8), "extra": np.zeros(1, np.float32)})),
    9: ("replies-dropped-shape", lambda to: train_reply(to, None)),  # no ArrayRecord at all
    10: ("replies-dropped-metrics", lambda to: train_reply(to, good(10), num_examples=None)),
    11: ("replies-dropped-metrics", lambda to: train_reply(to, good(11), num_examples=float("nan"))),
    12: ("replies-dropped-metrics", lambda to: train_reply(to, good(12), num_examples=0.0)),
    13: ("replies-dropped-metrics", lambda to: train_reply(to, good(13), metrics={"loss": float("inf")})),
    14: ("replies-dropped-metrics", lambda to: train_reply(to, good(14), metrics={}, num_examples=None)),
    15: ("replies-failed", lambda to: error_reply(to)),
    16: ("replies-dropped-shape", lambda to: train_reply(
        to, good(16), extra={"more": ArrayRecord({"w": Array(np.zeros((2, 2), np.float32))})})),
    17: ("replies-dropped-metrics", lambda to: train_reply(to, good(17), extra={"more": MetricRecord({"a": 1.0})})),
}
GOOD_NODES = [1, 2, 3]


def respond_mixed(msg):
    node = msg.metadata.dst_node_id
    if node in BAD:
        return BAD[node][1](msg)
    return train_reply(msg, good(node), {"loss": float(node)}, 10.0 * node)


def run(strategy, nodes, respond, rounds=1):
    grid = FakeGrid(nodes, respond)
    seen = {}
    result = strategy.start(grid=grid, initial_arrays=arrays_of(global_weights()), num_rounds=rounds,
                            train_config=ConfigRecord({}), evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    return result, seen


@pytest.mark.parametrize("name", ALL)
def test_bad_replies_are_excluded_and_counted(name):
    nodes = GOOD_NODES + sorted(BAD)
    result, seen = run(make_strategy(name, common=common(len(nodes))), nodes, respond_mixed)
    # The same strategy, fresh, fed the good replies only, gives the same model: nothing bad was averaged in.
    _, clean = run(make_strategy(name, common=common(len(GOOD_NODES))), GOOD_NODES, respond_mixed)
    for key, value in clean[1].items():
        np.testing.assert_allclose(seen[1][key], value, rtol=1e-6, err_msg=f"{name} {key}")
        assert np.isfinite(seen[1][key]).all()
    metrics = result.train_metrics_clientapp[1]
    for key in COUNTS:
        assert metrics[key] == sum(1 for cat, _ in BAD.values() if cat == key), (name, key)
    assert metrics["replies-received"] == len(nodes)
    assert metrics["replies-aggregated"] == len(GOOD_NODES)
    assert metrics["aggregation-skipped"] == 0


def test_fedavg_of_the_good_replies_matches_numpy():
    nodes = GOOD_NODES + sorted(BAD)
    _, seen = run(make_strategy("fedavg", common=common(len(nodes))), nodes, respond_mixed)
    ns = np.array([10.0 * n for n in GOOD_NODES])
    for key in ("w", "b"):
        want = sum(n * good(node)[key].astype(np.float64) for n, node in zip(ns, GOOD_NODES)) / ns.sum()
        np.testing.assert_allclose(seen[1][key], want, rtol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_round_with_only_bad_replies_keeps_the_previous_model(name):
    bad_nodes = [4, 6, 10, 15]

    def respond(msg):
        rnd = int(msg.content["config"]["server-round"])
        node = msg.metadata.dst_node_id
        if rnd == 1:
            return BAD[node][1](msg)
        return train_reply(msg, good(node), {"loss": 1.0}, 10.0)

    result, seen = run(make_strategy(name, common=common(len(bad_nodes))), bad_nodes, respond, rounds=2)
    for key, value in global_weights().items():
        np.testing.assert_array_equal(seen[1][key], value)  # round 1 kept the initial model
    metrics = result.train_metrics_clientapp[1]
    assert metrics["aggregation-skipped"] == 1 and metrics["replies-aggregated"] == 0
    assert [metrics[k] for k in COUNTS] == [1, 1, 1, 1]
    # Round 2 aggregates again, starting from the kept model.
    assert result.train_metrics_clientapp[2]["aggregation-skipped"] == 0
    assert not np.array_equal(seen[2]["w"], global_weights()["w"])


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "krum"])
def test_min_train_nodes_counts_the_replies_left_after_the_checks(name):
    """Three replies arrive, one malformed: with min-train-nodes 3 the round keeps the previous model before
    the strategy sees anything (FedAdam's moments stay untouched); with 2 it aggregates the other two."""
    import dataclasses

    from app_config.run_config import RunConfig
    from strategies.registry import build_strategy

    nodes = [1, 2, 3]

    def respond(msg):
        if msg.metadata.dst_node_id == 3:
            return train_reply(msg, good(3), {"loss": float("nan")}, 10.0)
        return train_reply(msg, good(msg.metadata.dst_node_id), {"loss": 1.0}, 10.0)

    def built(minimum):
        config = dataclasses.replace(RunConfig(), strategy=name, min_train_nodes=minimum, fraction_evaluate=0.0,
                                     num_malicious_nodes=0)
        return build_strategy(config)

    strict = built(3)
    result, seen = run(strict, nodes, respond)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["aggregation-skipped"] == 1 and metrics["replies-dropped-metrics"] == 1
    for key, value in global_weights().items():
        np.testing.assert_array_equal(seen[1][key], value)
    if name == "fedadam":
        assert strict.state_dict() == {}  # never reached
    result, seen = run(built(2), nodes, respond)
    assert result.train_metrics_clientapp[1]["aggregation-skipped"] == 0
    assert result.train_metrics_clientapp[1]["replies-aggregated"] == 2


def test_all_bad_round_logs_that_the_model_is_kept(caplog):
    import logging

    strategy = make_strategy("fedavg", common=common(1))
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(3, [error_reply(instruction(1))])
    assert arrays is None and metrics["aggregation-skipped"] == 1 and metrics["replies-failed"] == 1
    assert "previous global model is kept" in caplog.text


def test_differing_metric_keys_do_not_break_aggregation():
    """Flower's own validation rejects the whole round when MetricRecord keys differ; the filter does not."""
    nodes = [1, 2]

    def respond(msg):
        node = msg.metadata.dst_node_id
        metrics = {"loss": 1.0, "loss-image": 2.0} if node == 1 else {"loss": 3.0}
        return train_reply(msg, good(node), metrics, 10.0)

    result, seen = run(make_strategy("fedavg", common=common(2)), nodes, respond)
    np.testing.assert_allclose(seen[1]["w"], (good(1)["w"] + good(2)["w"]) / 2, rtol=1e-6)
    assert result.train_metrics_clientapp[1]["loss"] == pytest.approx(2.0)


def test_huge_finite_replies_aggregate_in_float64_and_do_not_stall_the_run():
    """float32 weights near float32's maximum once overflowed the float32 accumulator: every round was skipped."""
    huge = {**good(1), "w": np.full((2, 2), 3e38, np.float32)}

    def respond(msg):
        return train_reply(msg, huge, {"loss": 1.0}, 1.0)

    result, seen = run(make_strategy("fedavg", common=common(2)), [1, 2], respond)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["aggregation-nonfinite"] == 0 and metrics["aggregation-skipped"] == 0
    np.testing.assert_array_equal(seen[1]["w"], huge["w"])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_aggregate_beyond_float32_after_the_cast_is_refused():
    """FedAvgM computes in float64; a step beyond float32's range becomes Inf only when cast back: refused."""
    strategy = make_strategy("fedavgm", common=common(2), server_learning_rate=1e40, server_momentum=0.0)

    def respond(msg):
        return train_reply(msg, good(msg.metadata.dst_node_id), {"loss": 1.0}, 10.0)

    result, seen = run(strategy, [1, 2], respond)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["aggregation-nonfinite"] == 1 and metrics["aggregation-skipped"] == 1
    np.testing.assert_array_equal(seen[1]["w"], global_weights()["w"])


def test_filter_without_configure_train_uses_the_first_wellformed_reply():
    to = instruction(1)
    replies = [error_reply(to), train_reply(to, good(1)), train_reply(to, {"w": np.zeros(3, np.float32)}),
               train_reply(to, good(2))]
    kept, counts, notes = filter_replies(replies, None)
    assert kept == [replies[1], replies[3]]
    assert counts == {"failed": 1, "shape": 1}
    assert len(notes) == 2 and "array names differ" in notes[1]


def test_spec_reads_metadata_only():
    spec = array_spec(arrays_of(global_weights()))
    assert spec == {"w": ((2, 2), "float32"), "b": ((3,), "float32"), "n": ((), "int64")}


def test_unreadable_array_is_dropped_as_size():
    to = instruction(1)
    broken = ArrayRecord({"w": Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=b"garbage"),
                          "b": Array(good(1)["b"]), "n": Array(good(1)["n"])})
    reply = train_reply(to, None, extra={"arrays": broken})
    kept, counts, notes = filter_replies([reply], array_spec(arrays_of(global_weights())))
    assert kept == [] and counts == {"size": 1} and "cannot be read" in notes[0]


def test_evaluate_replies_with_bad_metrics_are_excluded():
    from flwr.app import Message, RecordDict

    strategy = make_strategy("fedavg", common={"fraction_evaluate": 1.0, "min_evaluate_nodes": 1})
    to = instruction(1)

    def evaluate_reply(metrics):
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=to)

    replies = [evaluate_reply({"loss": 1.0, "num-examples": 10.0}), evaluate_reply({"loss": 5.0}),
               evaluate_reply({"loss": 3.0, "num-examples": 30.0}), error_reply(to)]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["loss"] == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)
    assert strategy.aggregate_evaluate(1, [error_reply(to)]) is None


def test_all_replies_disagreeing_with_the_global_model_get_a_hint(caplog):
    import logging

    from flwr.app import ConfigRecord

    strategy = make_strategy("fedavg", common=common(2))
    wrong_global = {**global_weights(), "n": np.array([2], np.int64)}  # e.g. a 0-dim buffer saved as 1-dim
    list(strategy.configure_train(1, arrays_of(wrong_global), ConfigRecord({}), FakeGrid([1, 2], None)))
    replies = [train_reply(instruction(node), good(node)) for node in (1, 2)]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics["replies-dropped-shape"] == 2
    assert "every reply disagrees with the global model" in caplog.text
