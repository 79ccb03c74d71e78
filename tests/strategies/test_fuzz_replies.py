"""Fuzz: over 1,000 random hostile replies per strategy, mixed with honest ones, through the round loop.

For every registered strategy and every DP mode, rounds of 8 honest clients
and 126 hostile ones run through ``server_app.round_loop.run_rounds`` (reply
ordering, the strategy's filter and aggregation, the round record, its JSON
line and TensorBoard scalars). Each hostile reply is drawn at random from a
catalogue of bad dtypes, shapes, paddings, NaN/Inf, huge or negative counts,
junk or oversized client-info and metrics -- and of well-formed but extreme
replies, which must be aggregated (with a capped weight). The test checks that

* nothing raises, and no round's aggregation fails;
* every bad reply is counted under the reason the catalogue expects, every
  well-formed one aggregated;
* the global model stays finite and is bit-for-bit the model of a twin run that
  received only the honest replies and the well-formed hostile ones (the other
  hostile clients answering with plain errors there): nothing of a dropped
  reply reaches the model or the strategy's state. In odd rounds every hostile
  reply is one to drop, so there the model is the honest-only aggregate.
"""

from __future__ import annotations

import functools
import io
import json
import time
from collections import Counter

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client_app.dp_clipping import dp_clipping_mod
from server_app.round_loop import run_rounds
from server_app.round_record import client_entries
from server_app.run_output import json_line
from server_app.tensorboard_log import round_scalars
from strategies.dp import DP_MODES, DPSettings, wrap_dp
from strategies.registry import STRATEGIES, make_strategy
from tests.fake_grid import PER_MODALITY, FakeGrid, arrays_of, error_reply, numpy_of

HONEST = list(range(1, 9))
HOSTILE = list(range(100, 226))  # 126 a round
ROUNDS = 8
SEED = 1234
GLOBAL = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "b": np.zeros(4, np.float32),
          "bn.num_batches_tracked": np.array(0, np.int64)}
# creamfl replies with representations, not weights: tests/strategies/test_creamfl_strategy.py
CASES = [(name, "none") for name in sorted(set(STRATEGIES) - {"creamfl"})] + [("fedavg", mode) for mode in DP_MODES if mode != "none"]


def _npy(values: np.ndarray, version=None) -> bytes:
    fh = io.BytesIO()
    if version is None:
        np.save(fh, values, allow_pickle=False)
    else:
        np.lib.format.write_array(fh, values, version=version, allow_pickle=False)
    return fh.getvalue()


def _raw(values: np.ndarray, data: bytes, dtype: str | None = None, shape=None, stype: str = "numpy.ndarray"):
    return Array(dtype=dtype or str(values.dtype), shape=tuple(values.shape if shape is None else shape),
                 stype=stype, data=data)


def _info(node: int, **over) -> ConfigRecord:
    return ConfigRecord({"partition-id": node, "kind": "audiovisual", "host": f"host{node % 3}", "pid": 1000 + node,
                         **over})


def honest_weights(received: dict, node: int, rnd: int) -> dict:
    rng = np.random.default_rng(SEED + 1000 * rnd + node)
    out = {k: (v + rng.normal(scale=0.05, size=v.shape)).astype(v.dtype) for k, v in received.items()
           if k != "bn.num_batches_tracked"}
    out["bn.num_batches_tracked"] = np.asarray(received["bn.num_batches_tracked"] + 3)
    return out


def _content(arrays: ArrayRecord | None, metrics: dict | None, info: ConfigRecord | None, extra=None) -> RecordDict:
    content = {}
    if arrays is not None:
        content["arrays"] = arrays
    if metrics is not None:
        content["metrics"] = MetricRecord(metrics)
    if info is not None:
        content["client-info"] = info
    content.update(extra or {})
    return RecordDict(content)


def _inject(content: RecordDict, key: str, value) -> RecordDict:
    """Put a value Flower's record constructors refuse into the MetricRecord (a raw deserialiser might)."""
    content["metrics"].__dict__["_data"][key] = value
    return content


@functools.cache
def hostile(node: int, rnd: int, norm_bit: bool) -> tuple[str | None, RecordDict | str]:
    """A random hostile reply's content (or error text) and the category it must be dropped under.

    Category None: well-formed, to be aggregated. Drawn once per (node, round) and shared by every
    case and both runs of a case (nothing downstream modifies a reply's content).
    """
    rng = np.random.default_rng([SEED, rnd, node])
    base = honest_weights(GLOBAL, node, rnd)
    good_metrics = {"loss": 1.0, "num-examples": 10.0, **PER_MODALITY, **({"norm_bit": 0} if norm_bit else {})}
    info = _info(node)

    def with_arrays(arrays: dict, metrics=None, info_=info, extra=None):
        record = ArrayRecord({k: (v if isinstance(v, Array) else Array(np.asarray(v))) for k, v in arrays.items()})
        return _content(record, good_metrics if metrics is None else metrics, info_, extra)

    name = ["w", "b"][int(rng.integers(2))]
    kind = int(rng.integers(33 if rnd % 2 else 40))  # odd rounds: every hostile reply is one to drop
    nan_at = tuple(int(rng.integers(n)) for n in base[name].shape)
    cases = {
        # --- metrics
        0: ("metrics", lambda: with_arrays(base, {**good_metrics, "loss": [1.0, 2.0]})),
        1: ("metrics", lambda: with_arrays(base, {**good_metrics, "num-examples": float(rng.choice(
            [np.nan, np.inf, -np.inf, -5.0, 0.0, 1e18, 3e38, 2e12]))})),
        2: ("metrics", lambda: _inject(with_arrays(base), "loss", [None, "x", b"\x00", True, {"a": 1}][
            int(rng.integers(5))])),
        3: ("metrics", lambda: with_arrays(base, {**good_metrics, **{f"m{i}": 1.0 for i in range(70)}})),
        4: ("metrics", lambda: with_arrays(base, {**good_metrics, "k" * 100: 1.0})),
        5: ("metrics", lambda: with_arrays(base, {"loss": 1.0})),
        6: ("metrics", lambda: with_arrays(base, {**good_metrics, "loss": 1e300})),
        7: ("metrics", lambda: with_arrays(base, extra={"more": MetricRecord({"a": 1.0})})),
        8: ("metrics", lambda: _content(ArrayRecord({k: Array(v) for k, v in base.items()}), None, info)),
        # --- client-info
        9: ("client-info", lambda: with_arrays(base, info_=_info(node, **{"partition-id": float(rng.choice(
            [np.inf, np.nan, -1.0, 1.5]))}))),
        10: ("client-info", lambda: with_arrays(base, info_=_info(node, host=[b"h", "x" * 10_000, ["a"]][
            int(rng.integers(3))]))),
        11: ("client-info", lambda: with_arrays(base, info_=_info(node, secret=1))),
        12: ("client-info", lambda: with_arrays(base, info_=_info(node, kind="satellite"))),
        13: ("client-info", lambda: with_arrays(base, extra={"other": ConfigRecord({"a": 1})})),
        14: ("client-info", lambda: with_arrays(base, info_=_info(node, pid=True))),
        # --- shape
        15: ("shape", lambda: with_arrays({k: v for k, v in base.items() if k != name})),
        16: ("shape", lambda: with_arrays({**base, "extra": np.zeros(2, np.float32)})),
        17: ("shape", lambda: with_arrays({**base, name: np.zeros(base[name].size + 1, np.float32)})),
        18: ("shape", lambda: with_arrays({**base, name: _raw(base[name], _npy(base[name]),
                                                              shape=(2**40,) + base[name].shape[1:])})),
        19: ("shape", lambda: _content(None, good_metrics, info)),
        20: ("shape", lambda: with_arrays(base, extra={"more": ArrayRecord({"w": Array(base["w"])})})),
        # --- dtype
        21: ("dtype", lambda: with_arrays({**base, name: base[name].astype(
            [np.float64, np.complex128, np.bool_, np.int32, np.float16, np.int64][int(rng.integers(6))])})),
        22: ("dtype", lambda: with_arrays({**base, name: np.full(base[name].shape, 1e300)})),
        23: ("dtype", lambda: with_arrays({**base, name: _raw(base[name], _npy(base[name].astype(np.float64)),
                                                              dtype="float32")})),
        24: ("dtype", lambda: with_arrays({**base, "bn.num_batches_tracked": np.array(3.0, np.float32)})),
        # --- size
        25: ("size", lambda: with_arrays({**base, name: _raw(base[name], _npy(base[name]) + bytes(
            int(rng.integers(1, 4096))))})),
        26: ("size", lambda: with_arrays({**base, name: _raw(base[name], _npy(base[name])[:-int(rng.integers(1, 8))])})),
        27: ("size", lambda: with_arrays({**base, name: _raw(base[name], rng.bytes(int(rng.integers(0, 200))))})),
        28: ("size", lambda: with_arrays({**base, name: _raw(base[name], _npy(base[name]), stype="torch.Tensor")})),
        29: ("size", lambda: with_arrays({**base, name: _raw(base[name], _npy(base[name], version=(3, 0)))})),
        # --- nonfinite
        30: ("nonfinite", lambda: with_arrays({**base, name: _put(base[name], nan_at,
                                                                   float(rng.choice([np.nan, np.inf, -np.inf])))})),
        31: ("nonfinite", lambda: with_arrays({**base, "bn.num_batches_tracked": np.array(2**60, np.int64)})),
        # --- failed
        32: ("failed", lambda: "x" * int(rng.integers(1, 100_000))),  # an error reply's reason
    }
    if kind in cases:
        category, make = cases[kind]
        return category, make()
    # --- well-formed but extreme: aggregated, with the weight capped
    scale = float(10.0 ** rng.uniform(-3, 30))
    weights = {k: (rng.normal(size=v.shape) * scale).astype(v.dtype) if v.dtype.kind == "f" else v
               for k, v in base.items()}
    metrics = {**good_metrics, "num-examples": float(10.0 ** rng.uniform(0, 11)), "loss": float(rng.normal() * 1e6)}
    return None, with_arrays(weights, metrics)


def _put(values: np.ndarray, at, value) -> np.ndarray:
    out = values.copy()
    out[at] = value
    return out


def _message(to: Message, content: RecordDict | str) -> Message:
    return error_reply(to, content) if isinstance(content, str) else Message(content=content, reply_to=to)


def plan_for(norm_bit: bool):
    """(respond of the hostile run, respond of the twin run, expected drops per round)."""
    expected: dict[int, Counter] = {}

    def honest(msg):
        node, rnd = msg.metadata.dst_node_id, int(msg.content["config"]["server-round"])
        received = numpy_of(msg.content["arrays"])
        metrics = {"loss": 1.0, "num-examples": float(10 + node), **PER_MODALITY, "num-audio-examples": float(5 + node)}
        return _message(msg, _content(arrays_of(honest_weights(received, node, rnd)), metrics, _info(node)))

    def respond(msg):
        node, rnd = msg.metadata.dst_node_id, int(msg.content["config"]["server-round"])
        if node in HONEST:
            return honest(msg)
        category, content = hostile(node, rnd, norm_bit)
        expected.setdefault(rnd, Counter())[category or "accepted"] += 1
        return _message(msg, content)

    def twin(msg):
        node, rnd = msg.metadata.dst_node_id, int(msg.content["config"]["server-round"])
        if node in HONEST:
            return honest(msg)
        category, content = hostile(node, rnd, norm_bit)
        return _message(msg, content if category is None else "dropped in the hostile run")

    return respond, twin, expected


def build(name: str, mode: str):
    nodes = len(HONEST) + len(HOSTILE)
    common = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": nodes,
              "min_available_nodes": nodes}
    strategy = make_strategy(name, common=common)
    if mode != "none":
        strategy = wrap_dp(strategy, DPSettings(mode=mode, noise_multiplier=0.0, clipping_norm=5.0,
                                                sampled_clients=len(HONEST)))
    return strategy


def run(name: str, mode: str, respond, records: list | None = None):
    def answer(msg):
        if mode.startswith("client") and msg.metadata.dst_node_id in HONEST:  # honest clients run the DP mod
            return dp_clipping_mod(msg, None, lambda m, _ctx: respond(m))
        return respond(msg)

    grid = FakeGrid(HONEST + HOSTILE, answer)
    globals_: dict[int, dict] = {}
    trains = []

    def record_train(train):
        trains.append((train.round, train.metrics))  # not the replies: a small heap keeps gc cheap
        if records is not None:
            entries = client_entries(train.replies, train.missing_nodes, dropped=getattr(strategy, "last_dropped", {}))
            record = {"round": train.round, "train": {} if train.metrics is None else dict(train.metrics),
                      "clients": entries}
            line = json_line(record)
            json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            round_scalars(record)
            records.append(len(line))

    strategy = build(name, mode)
    run_rounds(strategy, grid, arrays_of(GLOBAL), num_rounds=ROUNDS, seed=SEED, record_train=record_train,
               evaluate_and_record=lambda r, a: globals_.__setitem__(r, numpy_of(a)))
    return globals_, trains


@pytest.mark.parametrize("name, mode", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_hostile_replies_are_dropped_counted_and_never_reach_the_model(name, mode):
    start = time.perf_counter()
    respond, twin, expected = plan_for(norm_bit=mode == "client-adaptive")
    lines: list[int] = []
    hostile_globals, trains = run(name, mode, respond, lines)
    twin_globals, _ = run(name, mode, twin)

    total = Counter()
    for rnd, metrics in trains:
        want = expected[rnd]
        total.update(want)
        assert metrics is not None and metrics.get("aggregation-failed", 0) == 0, (name, mode, rnd)
        for category in ("failed", "metrics", "client-info", "shape", "dtype", "size", "nonfinite"):
            key = "replies-failed" if category == "failed" else f"replies-dropped-{category}"
            assert metrics[key] == want.get(category, 0), (name, mode, rnd, key, dict(want))
        assert metrics["replies-aggregated"] == len(HONEST) + want.get("accepted", 0)
    for rnd, model in hostile_globals.items():
        for key, value in model.items():
            assert value.dtype == GLOBAL[key].dtype and value.shape == GLOBAL[key].shape
            assert np.isfinite(value).all(), (name, mode, rnd, key)
            np.testing.assert_array_equal(value, twin_globals[rnd][key], err_msg=f"{name} {mode} round {rnd} {key}")
    hostile_count = sum(n for c, n in total.items())
    assert hostile_count == ROUNDS * len(HOSTILE) >= 1000
    assert all(expected[rnd].get("accepted", 0) == 0 for rnd in expected if rnd % 2)
    assert max(lines) < 200_000  # a 10 MB client string or 100 kB error does not reach metrics.jsonl
    dropped = {c: n for c, n in total.items() if c != "accepted"}
    print(f"\n{name}/{mode}: {hostile_count} hostile replies in {ROUNDS} rounds, dropped {sum(dropped.values())} "
          f"{dict(sorted(dropped.items()))}, well-formed aggregated {total['accepted']}, "
          f"{time.perf_counter() - start:.1f} s")
