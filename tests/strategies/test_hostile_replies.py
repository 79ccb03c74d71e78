"""One crafted reply beside honest ones: it is dropped and counted, or its influence is bounded; nothing crashes.

Each test is a reply that once crashed the round or poisoned the global model
while passing every check.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from strategies.registry import STRATEGIES, make_strategy
from tests.fake_grid import PER_MODALITY, FakeGrid, arrays_of, instruction, numpy_of, train_reply
from tests.strategies.replies import global_weights, honest

ALL = sorted(set(STRATEGIES) - {"creamfl"})  # creamfl replies with representations, not weights: tests/strategies/test_creamfl_strategy.py
HONEST = [1, 2, 3]
BAD_NODE = 9




def info(node: int, **over) -> ConfigRecord:
    return ConfigRecord({"partition-id": node, "kind": "visual", "host": "h", "pid": 100 + node, **over})


def honest_reply(msg, node):
    return train_reply(msg, honest(node), {"loss": float(node), **PER_MODALITY}, 10.0 * node,
                       extra={"client-info": info(node)})


def common(n: int) -> dict:
    return {"fraction_evaluate": 0.0, "min_train_nodes": n, "min_available_nodes": n}


def run(name, bad, rounds=1, **params):
    """Run ``name`` with the honest nodes plus BAD_NODE answering ``bad(msg)``; also the honest-only twin."""
    def respond(msg):
        node = msg.metadata.dst_node_id
        return bad(msg) if node == BAD_NODE else honest_reply(msg, node)

    out = []
    for nodes in (HONEST + [BAD_NODE], HONEST):
        seen = {}
        strategy = make_strategy(name, common=common(len(nodes)), **params)
        result = strategy.start(grid=FakeGrid(nodes, respond), initial_arrays=arrays_of(global_weights()),
                                num_rounds=rounds, train_config=ConfigRecord({}),
                                evaluate_fn=lambda r, a, seen=seen: seen.__setitem__(r, numpy_of(a)))
        out.append((result, seen))
    return out


def assert_dropped(name, bad, key):
    """The bad reply is not aggregated (the model equals the honest-only one) and is counted under ``key``."""
    (result, seen), (_, clean) = run(name, bad)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["replies-aggregated"] == len(HONEST), (name, dict(metrics))
    for k, v in clean[1].items():
        np.testing.assert_array_equal(seen[1][k], v, err_msg=f"{name} {k}")
    assert metrics.get(key) == 1, (name, key, dict(metrics))


def raw_array(values: np.ndarray, *, dtype: str | None = None, shape=None, pad: bytes = b"") -> Array:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return Array(dtype=dtype or str(values.dtype), shape=tuple(values.shape if shape is None else shape),
                 stype="numpy.ndarray", data=buffer.getvalue() + pad)


def with_array(msg, name: str, array: Array, num_examples: float = 10.0, metrics=None):
    weights = honest(BAD_NODE)
    record = ArrayRecord({k: (array if k == name else Array(v)) for k, v in weights.items()})
    return train_reply(msg, None, metrics or {"loss": 1.0}, num_examples, extra={"arrays": record})


# --- crashes of the whole run ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_list_valued_metric_is_dropped(name):
    assert_dropped(name, lambda msg: train_reply(msg, honest(BAD_NODE), {"loss": [1.0, 2.0]}, 10.0),
                   "replies-dropped-metrics")


def _raw_metrics(msg, values: dict):
    """A MetricRecord holding values Flower's constructor refuses (a deserialiser may not check them)."""
    reply = train_reply(msg, honest(BAD_NODE), {"loss": 1.0}, 10.0)
    reply.content["metrics"].__dict__["_data"].update(values)
    return reply


@pytest.mark.parametrize("value", ["text", b"bytes", None, True, float("nan"), 1e300, {"a": 1}])
def test_metric_values_that_are_not_finite_numbers_are_dropped(value):
    assert_dropped("fedavg", lambda msg: _raw_metrics(msg, {"loss": value}), "replies-dropped-metrics")


@pytest.mark.parametrize("partition", [float("inf"), float("nan"), -1, 2**40, "3", b"x", [1], 1.5])
def test_bad_partition_id_is_dropped_and_does_not_break_reply_ordering(partition):
    from server_app.round_loop import reply_order, run_rounds

    def bad(msg):
        return train_reply(msg, honest(BAD_NODE), {"loss": 1.0}, 10.0,
                           extra={"client-info": ConfigRecord({"partition-id": partition})})

    nodes = HONEST + [BAD_NODE]
    seen = []

    def respond(msg):
        node = msg.metadata.dst_node_id
        return bad(msg) if node == BAD_NODE else honest_reply(msg, node)

    strategy = make_strategy("fedavg", common=common(len(nodes)))
    run_rounds(strategy, FakeGrid(nodes, respond), arrays_of(global_weights()), num_rounds=1, record_train=seen.append)
    (train,) = seen
    assert train.metrics["replies-dropped-client-info"] == 1 and train.metrics["replies-aggregated"] == 3
    assert sorted(train.replies, key=reply_order)[-1].metadata.src_node_id == BAD_NODE  # no partition: sorted last


@pytest.mark.parametrize("over", [{"host": b"bytes"}, {"host": ["a", "b"]}, {"host": "x" * 10_000_000},
                                  {"kind": "satellite"}, {"pid": -5}, {"secret": 1}, {"ray-node-id": 3.5}])
def test_client_info_outside_what_honest_clients_send_is_dropped(over):
    assert_dropped("fedavg", lambda msg: train_reply(msg, honest(BAD_NODE), {"loss": 1.0}, 10.0,
                                                     extra={"client-info": info(BAD_NODE, **over)}),
                   "replies-dropped-client-info")


def test_client_info_rules_match_what_honest_clients_send():
    from client_app.worker_info import worker_info
    from strategies.reply_check import CLIENT_INFO_FIELDS, check_client_info

    sent = worker_info(3, "audiovisual")
    assert set(sent) <= set(CLIENT_INFO_FIELDS)
    reply = train_reply(instruction(1), honest(1), {"loss": 1.0}, 10.0, extra={"client-info": sent})
    assert check_client_info(reply) is None


# --- poisoning that passed every check --------------------------------------------------------------
@pytest.mark.parametrize("values", [
    np.full((2, 2), 1e300, np.float64),  # aggregated to a finite float64, Inf once cast to float32
    np.ones((2, 2), np.complex128),
    np.ones((2, 2), bool),
    np.full((2, 2), 2**62, np.int64),
    np.ones((2, 2), np.int32),
    np.ones((2, 2), np.float16),
])
def test_arrays_of_another_dtype_are_dropped(values):
    for name in ("fedavg", "fedmedian"):
        assert_dropped(name, lambda msg: with_array(msg, "w", Array(values)), "replies-dropped-dtype")


def test_npy_header_dtype_must_match_the_metadata():
    """Metadata saying float32 over float64 bytes (Flower decodes the bytes' dtype)."""
    lying = raw_array(np.full((2, 2), 1e300), dtype="float32")
    assert_dropped("fedavg", lambda msg: with_array(msg, "w", lying), "replies-dropped-dtype")


def test_first_reply_cannot_set_the_layer_dtype():
    """A float16 layer in the first reply used to set the accumulator's dtype and round the whole layer."""
    half = honest(BAD_NODE)["w"].astype(np.float16)
    bad_first = [BAD_NODE] + HONEST

    def respond(msg):
        node = msg.metadata.dst_node_id
        return with_array(msg, "w", Array(half)) if node == BAD_NODE else honest_reply(msg, node)

    strategy = make_strategy("fedavg", common=common(4))
    seen = {}
    strategy.start(grid=FakeGrid(bad_first, respond), initial_arrays=arrays_of(global_weights()), num_rounds=1,
                   evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    ns = np.array([10.0 * n for n in HONEST])
    want = sum(n * honest(node)["w"].astype(np.float64) for n, node in zip(ns, HONEST)) / ns.sum()
    assert seen[1]["w"].dtype == np.float32
    np.testing.assert_allclose(seen[1]["w"], want, rtol=1e-7)


def test_huge_integer_buffer_is_dropped():
    assert_dropped("fedavg", lambda msg: with_array(msg, "n", Array(np.array(2**60, np.int64))),
                   "replies-dropped-nonfinite")


@pytest.mark.parametrize("pad", [b"\0" * (5 * 2**20), b"x"])
def test_padded_arrays_are_dropped(pad):
    padded = raw_array(honest(BAD_NODE)["w"], pad=pad)
    assert_dropped("fedavg", lambda msg: with_array(msg, "w", padded), "replies-dropped-size")


def test_truncated_arrays_are_dropped():
    good = raw_array(honest(BAD_NODE)["w"])
    short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-3])
    assert_dropped("fedavg", lambda msg: with_array(msg, "w", short), "replies-dropped-size")


def test_claimed_shape_cannot_make_the_server_allocate():
    claims = raw_array(np.zeros(3, np.float32), shape=(2**40,))
    assert_dropped("fedavg", lambda msg: with_array(msg, "b", claims), "replies-dropped-shape")


@pytest.mark.parametrize("count", [1e18, 3e38, 2e12, -5.0, 0.0])  # the bound is 1e12
def test_num_examples_beyond_the_bound_is_dropped(count):
    assert_dropped("fedavg", lambda msg: train_reply(msg, honest(BAD_NODE), {"loss": 1.0}, count),
                   "replies-dropped-metrics")


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "ldawa"])
def test_large_num_examples_is_capped_at_k_times_the_lower_median(name):
    """1e11 examples (under the hard bound) weigh as 4 x the lower median, not as the whole round."""
    params = {"weighting": True} if name == "ldawa" else {}

    def bad(msg):
        return train_reply(msg, honest(BAD_NODE), {"loss": 1.0}, 1e11, extra={"client-info": info(BAD_NODE)})

    (result, seen), _ = run(name, bad, **params)
    assert result.train_metrics_clientapp[1]["replies-weight-capped"] == 1
    sizes = [10.0, 20.0, 30.0]  # honest nodes 1, 2, 3; lower median of (10, 20, 30, 1e11) is 20
    weights = sizes + [4 * 20.0]
    clients = [honest(n) for n in HONEST] + [honest(BAD_NODE)]
    if name == "ldawa":
        from strategies.ldawa import ldawa_aggregate

        want, _ = ldawa_aggregate([{k: v for k, v in c.items()} for c in clients], global_weights(), weights,
                                  weighting=True)
        want = want["w"]
    else:
        want = sum(w * c["w"].astype(np.float64) for w, c in zip(weights, clients)) / sum(weights)
    np.testing.assert_allclose(seen[1]["w"], want, rtol=1e-6)
    # Uncapped, the liar would be the aggregate.
    assert not np.allclose(seen[1]["w"], honest(BAD_NODE)["w"], atol=1e-3)


def test_weight_cap_can_be_turned_off():
    def bad(msg):
        return train_reply(msg, honest(BAD_NODE), {"loss": 1.0}, 1e11)

    (result, seen), _ = run("fedavg", bad, weight_cap_factor=0)
    assert result.train_metrics_clientapp[1]["replies-weight-capped"] == 0
    np.testing.assert_allclose(seen[1]["w"], honest(BAD_NODE)["w"], rtol=1e-6)


def test_client_metric_cannot_replace_the_server_counts():
    (result, _), _ = run("fedavg", lambda msg: train_reply(msg, honest(BAD_NODE), {"clients": 1e6}, 10.0))
    assert result.train_metrics_clientapp[1]["clients"] == 4


@pytest.mark.parametrize("name", ALL)
def test_an_array_record_under_another_name_is_dropped_and_cannot_veto_the_round(name):
    """Once passed the filter, then Flower's selection code raised KeyError: 'arrays' and the robust strategies
    kept the previous model every round that client was sampled."""
    def renamed(msg):
        return train_reply(msg, None, {"loss": 1.0}, 10.0,
                           extra={"weights": arrays_of(honest(BAD_NODE)), "client-info": info(BAD_NODE)})

    assert_dropped(name, renamed, "replies-dropped-shape")


def _extreme(kind: str) -> dict[str, np.ndarray]:
    g, h = global_weights(), honest(BAD_NODE)
    if kind == "replacement":  # model replacement: the client's own update scaled 1000x
        return {k: (g[k] + 1000 * (h[k] - g[k])).astype(g[k].dtype) if k != "n" else h[k] for k in g}
    value = {"3e38": 3e38, "-1e19": -1e19}[kind]
    return {k: np.full_like(g[k], value) if k != "n" else h[k] for k in g}


def _distance(a: dict, b: dict) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in ("w", "b"))))


@pytest.mark.parametrize("kind", ["3e38", "-1e19", "replacement"])
@pytest.mark.parametrize("name", ALL)
def test_a_well_formed_extreme_update_has_bounded_influence(name, kind):
    """Finite float32 replies once moved the mean-based strategies by up to 2.4e37 from the honest aggregate and
    froze FedAdam for the rest of the run; now every update is at most 10x the round's lower-median update norm."""
    bad = lambda msg: train_reply(msg, _extreme(kind), {"loss": 1.0}, 10.0,  # noqa: E731
                                  extra={"client-info": info(BAD_NODE)})
    (result, seen), (_, clean) = run(name, bad, rounds=3)
    honest_norm = max(_distance(honest(n), global_weights()) for n in HONEST)
    for r in (1, 2, 3):
        assert all(np.isfinite(seen[r][k]).all() for k in ("w", "b")), (name, kind, r)
        assert _distance(seen[r], clean[r]) <= 10 * honest_norm * r, (name, kind, r, _distance(seen[r], clean[r]))
    assert result.train_metrics_clientapp[1]["replies-norm-bounded"] == 1


def test_the_update_bound_can_be_turned_off_and_honest_rounds_are_untouched():
    bad = lambda msg: train_reply(msg, _extreme("replacement"), {"loss": 1.0}, 10.0,  # noqa: E731
                                  extra={"client-info": info(BAD_NODE)})
    (result, seen), _ = run("fedavg", bad, update_norm_cap_factor=0)
    assert result.train_metrics_clientapp[1]["replies-norm-bounded"] == 0
    (_, honest_seen), (_, clean) = run("fedavg", honest_reply_of_node)
    assert _distance(honest_seen[1], clean[1]) < 1.0  # 4 honest clients vs 3: the mean moves a little
    assert _distance(seen[1], clean[1]) > 100  # unbounded, the replacement is most of the mean


def honest_reply_of_node(msg):
    return honest_reply(msg, msg.metadata.dst_node_id)
