"""CreamFL's strategy shell: banks instead of the model on the wire, and representation replies screened."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from strategies.creamfl_strategy import CreamFLStrategy
from strategies.registry import make_strategy
from tests.fake_grid import FakeGrid, arrays_of, error_reply, numpy_of, train_reply

N, D = 6, 4
MODEL = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}


class FakeServer:
    """The server side as the rule sees it: fixed banks; the new model is the old one + the replies' count."""

    wire_dtype = "float32"

    def __init__(self) -> None:
        self.seen: dict[str, list[np.ndarray]] = {}

    def indices(self):
        return {"image": np.arange(N), "audio": np.arange(N) + 10}

    def banks(self, global_model):
        return {"image": np.eye(N, D, dtype=np.float32), "audio": np.eye(N, D, 1, dtype=np.float32)}

    def distil(self, server_round, global_model, replies, banks, learning_rate):
        self.seen = replies
        count = sum(len(v) for v in replies.values())
        return ArrayRecord({k: Array(v + count) for k, v in numpy_of(global_model).items()}), {"server-x": 1.0}


def info(node: int, kind: str) -> dict:
    return {"client-info": ConfigRecord({"partition-id": node, "kind": kind})}


def reps(*modalities: str, shape=(N, D), dtype=np.float32, value=0.5) -> dict[str, np.ndarray]:
    return {m: np.full(shape, value, dtype) for m in modalities}


REPLIES = {  # node -> (reply maker, the drop category or None)
    1: (lambda m: train_reply(m, reps("image"), extra=info(1, "visual")), None),
    2: (lambda m: train_reply(m, reps("audio"), extra=info(2, "audio")), None),
    3: (lambda m: train_reply(m, reps("image", "audio"), extra=info(3, "audiovisual")), None),
    4: (lambda m: train_reply(m, reps("audio"), extra=info(4, "visual")), "replies-dropped-shape"),  # not held
    5: (lambda m: train_reply(m, reps("image", shape=(N - 1, D)), extra=info(5, "visual")), "replies-dropped-shape"),
    6: (lambda m: train_reply(m, reps("image", value=np.nan), extra=info(6, "visual")), "replies-dropped-nonfinite"),
    7: (lambda m: train_reply(m, reps("image", dtype=np.float64), extra=info(7, "visual")), "replies-dropped-dtype"),
    8: (lambda m: train_reply(m, MODEL, extra=info(8, "visual")), "replies-dropped-shape"),  # weights, not reps
    9: (lambda m: error_reply(m), "replies-failed"),
    10: (lambda m: train_reply(m, reps("image"), num_examples=None, extra=info(10, "visual")), "replies-dropped-metrics"),
}


def _strategy() -> tuple[CreamFLStrategy, FakeServer]:
    strategy = make_strategy("creamfl", common={"fraction_train": 1.0, "min_train_nodes": 1,
                                                "min_available_nodes": 1})
    assert isinstance(strategy, CreamFLStrategy)
    server = FakeServer()
    strategy.rule.server = server
    return strategy, server


def test_train_messages_carry_banks_and_indices_not_the_model():
    strategy, _ = _strategy()
    grid = FakeGrid([1, 2], lambda m: m)
    messages = list(strategy.configure_train(1, arrays_of(MODEL), ConfigRecord({"learning-rate": 0.1}), grid))
    sent = numpy_of(messages[0].content["arrays"])
    assert set(sent) == {"image", "audio", "image-index", "audio-index"}
    assert sent["image"].shape == (N, D) and sent["audio-index"].tolist() == list(range(10, 10 + N))
    assert strategy.rule.learning_rate == 0.1


def test_malformed_replies_are_dropped_and_counted_and_the_rest_ensembled():
    strategy, server = _strategy()
    nodes = sorted(REPLIES)
    grid = FakeGrid(nodes, lambda m: REPLIES[m.metadata.dst_node_id][0](m))
    messages = list(strategy.configure_train(1, arrays_of(MODEL), ConfigRecord({}), grid))
    replies = grid.send_and_receive(messages)
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and arrays is not None
    expected: dict[str, int] = {}
    for _, category in REPLIES.values():
        if category:
            expected[category] = expected.get(category, 0) + 1
    for key, count in expected.items():
        assert metrics[key] == count, key
    assert metrics["replies-aggregated"] == 3 and metrics["aggregation-skipped"] == 0
    assert len(server.seen["image"]) == 2 and len(server.seen["audio"]) == 2  # visual + audio-visual, audio + a-v
    assert metrics["creamfl-clients-image"] == 2 and metrics["server-x"] == 1.0
    np.testing.assert_array_equal(numpy_of(arrays)["w"], MODEL["w"] + 4)


def test_a_round_of_only_bad_replies_keeps_the_model():
    strategy, _ = _strategy()
    grid = FakeGrid([4, 5], lambda m: REPLIES[m.metadata.dst_node_id][0](m))
    messages = list(strategy.configure_train(1, arrays_of(MODEL), ConfigRecord({}), grid))
    arrays, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert arrays is None and metrics is not None and metrics["aggregation-skipped"] == 1


def test_the_rule_keeps_no_state():
    strategy, _ = _strategy()
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})
