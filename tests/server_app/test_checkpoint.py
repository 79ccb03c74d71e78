"""Checkpoints: exact round trips, strategy state for every strategy, atomic writes, the round loop."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

import file_io.atomic as atomic_file
from app_config.run_config import ConfigError
from server_app.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    capture_strategy_state,
    config_mismatch,
    decode,
    encode,
    load_checkpoint,
    restore_rng,
    restore_strategy_state,
    save_checkpoint,
)
from server_app.round_loop import run_rounds
from strategies.registry import STRATEGIES, make_strategy
from tests.conftest import PROJECT
from tests.fake_grid import FakeGrid, arrays_of, error_reply, numpy_of, train_reply
from tests.process_helpers import reaped, sigkill

COMMON = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 2, "min_evaluate_nodes": 0,
          "min_available_nodes": 2}
PARAMS = {"ldawa": {"warmup_rounds": 1}, "fedadam": {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
          "fedyogi": {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}, "fedadagrad": {"eta": 0.1, "tau": 1e-3},
          "fedavgm": {"server_learning_rate": 1.0, "server_momentum": 0.9}, "fedprox": {"proximal_mu": 0.1},
          "fedtrimmedavg": {"beta": 0.2}}
NODES = [11, 12, 13, 14, 15]


def _initial() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return arrays_of({"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32),
                      "n": np.array(3, dtype=np.int64)})


def _respond(msg):
    """A client: moves the global weights by noise fixed by (node, round)."""
    node, server_round = msg.metadata.dst_node_id, int(msg.content["config"]["server-round"])
    rng = np.random.default_rng(node * 1000 + server_round)
    weights = {k: (v + rng.normal(scale=0.1, size=v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v + 1
               for k, v in numpy_of(msg.content["arrays"]).items()}
    return train_reply(msg, weights, num_examples=float(node))


def _rounds(strategy, arrays, start, end, **kwargs):
    return run_rounds(strategy, FakeGrid(NODES, _respond), arrays, num_rounds=end, start_round=start,
                      seed=3, **kwargs)


def _equal(a: ArrayRecord, b: ArrayRecord) -> bool:
    return list(a.keys()) == list(b.keys()) and all(
        tuple(a[k].shape) == tuple(b[k].shape) and a[k].numpy().shape == b[k].numpy().shape
        and a[k].numpy().dtype == b[k].numpy().dtype and a[k].numpy().tobytes() == b[k].numpy().tobytes() for k in a)


def test_model_arrays_keep_their_shapes_through_a_checkpoint(tmp_path):
    """0-d buffers (BatchNorm's num_batches_tracked) must stay 0-d, or clients' replies look misshapen."""
    from strategies.reply_filter import array_spec

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    arrays = ArrayRecord(model.state_dict())
    save_checkpoint(tmp_path, Checkpoint(round=1, arrays=arrays, strategy_name="fedavg"))
    back = load_checkpoint(tmp_path).arrays
    assert array_spec(back) == array_spec(arrays) and _equal(back, arrays)
    assert back["1.num_batches_tracked"].numpy().shape == ()


def test_encode_decode_is_exact_and_loads_with_weights_only(tmp_path):
    value = {"rec": _initial(), "list": [np.arange(3, dtype=np.float64), None, 2.5], "tuple": (1, "x"),
             "scalar": np.float32(1.25), "u32": np.arange(4, dtype=np.uint32), "empty": np.zeros((0, 2))}
    torch.save(encode(value), tmp_path / "x.pt")
    back = decode(torch.load(tmp_path / "x.pt", weights_only=True))
    assert _equal(back["rec"], value["rec"])
    assert back["list"][0].tobytes() == value["list"][0].tobytes() and back["list"][1:] == [None, 2.5]
    assert back["tuple"] == (1, "x") and back["scalar"] == np.float32(1.25)
    assert back["u32"].dtype == np.uint32 and back["u32"].tolist() == [0, 1, 2, 3]
    assert back["empty"].shape == (0, 2)


# creamfl's rounds need its server side and representation replies: tests/server_app/test_creamfl_run.py
WEIGHT_RULES = sorted(set(STRATEGIES) - {"creamfl"})


@pytest.mark.parametrize("name", WEIGHT_RULES)
def test_resumed_rounds_equal_uninterrupted_rounds_bitwise(tmp_path, name):
    """Rounds 1-4 in one go == rounds 1-2, checkpoint to disk, new strategy object, rounds 3-4."""
    whole = _rounds(make_strategy(name, common=COMMON, **PARAMS.get(name, {})), _initial(), 1, 4)

    first = make_strategy(name, common=COMMON, **PARAMS.get(name, {}))
    part = _rounds(first, _initial(), 1, 2)
    save_checkpoint(tmp_path, Checkpoint(round=2, arrays=part.arrays, strategy_name=name,
                                         strategy_state=capture_strategy_state(first), rng=capture_rng(3)))
    saved = load_checkpoint(tmp_path)
    second = make_strategy(name, common=COMMON, **PARAMS.get(name, {}))
    restore_strategy_state(second, saved.strategy_state)
    resumed = _rounds(second, saved.arrays, saved.round + 1, 4)
    assert _equal(resumed.arrays, whole.arrays)


def test_strategy_state_matters_for_fedadam(tmp_path):
    """Without its moments FedAdam continues differently: the state really is needed."""
    params = PARAMS["fedadam"]
    whole = _rounds(make_strategy("fedadam", common=COMMON, **params), _initial(), 1, 3)
    first = make_strategy("fedadam", common=COMMON, **params)
    part = _rounds(first, _initial(), 1, 2)
    state = decode(capture_strategy_state(first))
    assert set(state) == {"m", "v"}  # FedAdam's moments; the model they are applied to is the checkpoint's
    fresh = make_strategy("fedadam", common=COMMON, **params)
    assert not _equal(_rounds(fresh, part.arrays, 3, 3).arrays, whole.arrays)


def test_rng_states_round_trip(tmp_path):
    import random

    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    state = capture_rng(5)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.save({"rng": state}, tmp_path / "r.pt")
    restore_rng(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1] \
        and np.random.rand() == expected[2]


def _checkpoint(round_: int, size: int = 4) -> Checkpoint:
    return Checkpoint(round=round_, arrays=arrays_of({"w": np.full(size, round_, dtype=np.float32)}),
                      strategy_name="fedavg", history=[{"round": r} for r in range(round_ + 1)],
                      run_config={"seed": 1})


def test_write_interrupted_before_replace_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _checkpoint(1))

    def killed(*_args):
        raise KeyboardInterrupt("killed before os.replace")

    monkeypatch.setattr(atomic_file.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, _checkpoint(2))
    monkeypatch.undo()
    back = load_checkpoint(tmp_path)
    assert back.round == 1 and back.arrays["w"].numpy().tolist() == [1.0] * 4
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # the temporary file is gone


WRITER = """
import sys, numpy as np
from server_app.checkpoint import Checkpoint, save_checkpoint
from tests.fake_grid import arrays_of
folder = sys.argv[1]
for r in range(1, 10_000):
    save_checkpoint(folder, Checkpoint(round=r, arrays=arrays_of({"w": np.full(4_000_000, r, dtype=np.float32)}),
                                       strategy_name="fedavg"))
    print(r, flush=True)
"""


def test_sigkill_during_writes_never_leaves_a_torn_checkpoint(tmp_path):
    """A writer killed at arbitrary moments (16 MB checkpoints) leaves a loadable, consistent file."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=PROJECT,
                            stdout=subprocess.PIPE, text=True)
    with reaped(proc):
        proc.stdout.readline()  # the first checkpoint exists
        time.sleep(0.37)  # kill mid-way through a later write
        sigkill(proc)
    back = load_checkpoint(tmp_path)
    values = back.arrays["w"].numpy()
    assert back.round >= 1 and values.shape == (4_000_000,) and (values == back.round).all()
    save_checkpoint(tmp_path, _checkpoint(99))  # the next write removes leftover temporary files
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_unreadable_or_missing_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint.pt in run folder"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert "\n" not in str(err.value)


def test_config_mismatch_names_the_key():
    assert config_mismatch({"seed": 1, "num-server-rounds": 3}, {"seed": 1, "num-server-rounds": 9}) is None
    problem = config_mismatch({"seed": 1, "strategy": "fedavg"}, {"seed": 2, "strategy": "fedavg"})
    assert problem.startswith("seed:") and "\n" not in problem


@pytest.mark.parametrize("override, key", [
    ({"checkpoint-every": -1}, "checkpoint-every"),
    ({"resume-from": "/nonexistent/run"}, "resume-from"),
    ({"round-timeout": 0}, "round-timeout"),
    ({"fault-rate": 1.5}, "fault-rate"),
    ({"fault-mode": "explode"}, "fault-mode"),
])
def test_reliability_keys_are_validated(override, key):
    from server_app.preflight import checked_run_config

    with pytest.raises(ConfigError) as err:
        checked_run_config(override)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


class DroppingGrid(FakeGrid):
    """Node 13 never answers (a client that hung or disconnected)."""

    def send_and_receive(self, messages, *, timeout=None):
        return [r for r in super().send_and_receive(messages, timeout=timeout) if r.metadata.src_node_id != 13]


def test_round_loop_counts_errors_and_missing_replies_and_honours_the_minimum():
    def respond(msg):
        if msg.metadata.dst_node_id in (11, 12):
            return error_reply(msg, "ClientApp raised")
        return _respond(msg)

    seen = []
    strategy = make_strategy("fedavg", common=COMMON)
    result = run_rounds(strategy, DroppingGrid(NODES, respond), _initial(), num_rounds=1, min_replies=2,
                        record_train=seen.append)
    (train,) = seen
    assert (train.sent, len(train.replies), train.errors, train.missing_nodes, train.failures) == (5, 4, 2, [13], 3)
    assert train.skipped is None and train.metrics["replies-aggregated"] == 2
    assert not _equal(result.arrays, _initial())
    assert set(train.phases) == {"configure", "wait", "aggregate"} and min(train.phases.values()) >= 0
    model_bytes = sum(len(a.data) for a in _initial().values())
    assert train.bytes_sent == 5 * model_bytes and train.bytes_received == 2 * model_bytes  # 2 successful replies

    seen.clear()
    result = run_rounds(make_strategy("fedavg", common=COMMON), DroppingGrid(NODES, respond), _initial(),
                        num_rounds=1, min_replies=3, record_train=seen.append)
    assert seen[0].skipped and seen[0].metrics is None and len(result.arrays) == 0  # previous model kept


def test_round_loop_starts_at_the_given_round_and_skips_the_initial_evaluation():
    rounds_evaluated, configured = [], []
    strategy = make_strategy("fedavg", common=COMMON)
    configure = strategy.configure_train

    def spy(server_round, arrays, config, grid):
        configured.append(server_round)
        return configure(server_round, arrays, config, grid)

    strategy.configure_train = spy
    run_rounds(strategy, FakeGrid(NODES, _respond), _initial(), num_rounds=5, start_round=4,
               evaluate_and_record=lambda r, a: rounds_evaluated.append(r), train_config=ConfigRecord({}))
    assert configured == [4, 5] and rounds_evaluated == [4, 5]


def test_reply_order_does_not_change_the_aggregate():
    """Replies sorted by partition before aggregation: arrival order cannot change the sums."""
    class Shuffled(FakeGrid):
        def __init__(self, nodes, respond, reverse):
            super().__init__(nodes, respond)
            self.reverse = reverse

        def send_and_receive(self, messages, *, timeout=None):
            replies = super().send_and_receive(messages, timeout=timeout)
            return replies[::-1] if self.reverse else replies

    def respond(msg):
        reply = _respond(msg)
        reply.content["client-info"] = ConfigRecord({"partition-id": msg.metadata.dst_node_id % 7})
        return reply

    a = run_rounds(make_strategy("fedavg", common=COMMON), Shuffled(NODES, respond, False), _initial(), num_rounds=2)
    b = run_rounds(make_strategy("fedavg", common=COMMON), Shuffled(NODES, respond, True), _initial(), num_rounds=2)
    assert _equal(a.arrays, b.arrays)


# --------------------------------------------------------------------------- what a checkpoint may set
@pytest.mark.parametrize("name, state, match", [
    ("fedavg", {"min_train_nodes": 0}, "fedavg keeps no state"),  # a hyper-parameter, not state
    ("fedavg", {"m": {"w": np.zeros(3)}}, "fedavg keeps no state"),  # FedAvg has no moments
    ("ldawa", {"_global": "not arrays"}, "ldawa keeps no state"),
    ("fedadam", {"m_t": {"w": np.zeros(3)}}, "unknown state 'm_t'"),  # Flower's names are not the rule's
    ("fedadam", {"m": "not arrays", "v": {"w": np.zeros(3)}}, "float arrays"),
    ("fedavgm", {"momentum": [np.zeros(3)]}, "float arrays"),
])
def test_restore_sets_only_the_rules_own_state(name, state, match):
    strategy = make_strategy(name, common=COMMON)
    before = dict(vars(strategy.rule))
    with pytest.raises(CheckpointError, match=match) as err:
        restore_strategy_state(strategy, encode(state))
    assert "\n" not in str(err.value)
    assert vars(strategy.rule) == before


def test_dp_adaptive_wrapper_resumes_exactly_with_its_clipping_norm_and_inner_state(tmp_path):
    """server-adaptive DP around FedAdam: the clipping norm and FedAdam's moments both survive a resume."""
    from strategies.dp import DPSettings, wrap_dp

    settings = DPSettings(mode="server-adaptive", noise_multiplier=0.0, clipping_norm=0.05, sampled_clients=5)

    def fresh():
        return wrap_dp(make_strategy("fedadam", common=COMMON, **PARAMS["fedadam"]), settings)

    whole = _rounds(fresh(), _initial(), 1, 4)
    first = fresh()
    part = _rounds(first, _initial(), 1, 2)
    state = capture_strategy_state(first)
    decoded = decode(state)  # Flower's wrapper's adapted norm beside FedAdam's moments
    assert decoded["clipping-norm"] != 0.05 and set(decoded["strategy"]) == {"m", "v"}
    save_checkpoint(tmp_path, Checkpoint(round=2, arrays=part.arrays, strategy_name="fedadam", strategy_state=state))
    second = fresh()
    restore_strategy_state(second, load_checkpoint(tmp_path).strategy_state)
    assert second.strategy.clipping_norm == first.strategy.clipping_norm
    assert _equal(_rounds(second, part.arrays, 3, 4).arrays, whole.arrays)


# --------------------------------------------------------------------------- file modes
def test_atomic_writes_keep_the_replaced_files_mode_and_give_new_files_the_umask_mode(tmp_path):
    from file_io.atomic import write_text as atomic_write_text

    old = os.umask(0o022)
    try:
        new = tmp_path / "new.txt"
        atomic_write_text(new, "a")
        assert oct(os.stat(new).st_mode & 0o777) == oct(0o644)
        shared = tmp_path / "shared.txt"
        shared.write_text("x")
        os.chmod(shared, 0o664)
        atomic_write_text(shared, "y")
        assert oct(os.stat(shared).st_mode & 0o777) == oct(0o664) and shared.read_text() == "y"
    finally:
        os.umask(old)


def test_metrics_file_keeps_its_mode_when_cut_back_on_resume(tmp_path):
    from server_app.run_output import RunOutput

    old = os.umask(0o022)
    try:
        output = RunOutput(tmp_path)
        for r in range(3):
            output.append_round({"round": r})
        assert oct(os.stat(output.metrics_file).st_mode & 0o777) == oct(0o644)
        output.rewrite_rounds([{"round": 0}, {"round": 1}])
        assert oct(os.stat(output.metrics_file).st_mode & 0o777) == oct(0o644)
        assert output.metrics_file.read_text().splitlines() == ['{"round": 0}', '{"round": 1}']
    finally:
        os.umask(old)


@pytest.mark.parametrize("name", WEIGHT_RULES)
def test_every_registered_rule_owns_exactly_its_server_state(name):
    """The checkpoint keeps no list of strategy attributes: each rule's state_dict is its state."""
    strategy = make_strategy(name, common=COMMON, **PARAMS.get(name, {}))
    _rounds(strategy, _initial(), 1, 2)
    expected = {"fedadam": {"m", "v"}, "fedyogi": {"m", "v"}, "fedadagrad": {"m", "v"}}
    if name == "fedavgm" and PARAMS.get(name, {}).get("server_momentum"):
        expected[name] = {"momentum"}
    assert set(strategy.state_dict()) == expected.get(name, set())
