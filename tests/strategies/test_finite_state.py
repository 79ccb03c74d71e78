"""FedOpt's moments and FedAvgM's momentum stay finite even with the update bound turned off."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from strategies.finite_state import state_is_finite as finite
from strategies.registry import make_strategy
from tests.fake_grid import FakeGrid, arrays_of, numpy_of, train_reply
from tests.strategies.replies import global_weights, honest

COMMON = {"fraction_evaluate": 0.0, "min_train_nodes": 4, "min_available_nodes": 4}
# FedAvgM's momentum of a 3e38 round stays finite (it is the bounded-influence tests' case, update bound on).
PARAMS = {"fedadam": {"eta": 0.1}, "fedyogi": {"eta": 0.1}, "fedadagrad": {"eta": 0.1}}


def run(name, rounds=3):
    """Four clients; node 4 sends 3e38 everywhere in round 1 only; the update bound is off."""
    states = []

    def respond(msg):
        node, rnd = msg.metadata.dst_node_id, int(msg.content["config"]["server-round"])
        if node == 4 and rnd == 1:
            g = global_weights()
            weights = {k: np.full_like(v, 3e38) if v.dtype.kind == "f" else v for k, v in g.items()}
        else:
            weights = honest(node)
        return train_reply(msg, weights, {"loss": 1.0}, 10.0)

    seen: dict = {}
    strategy = make_strategy(name, common=COMMON, update_norm_cap_factor=0, weight_cap_factor=0, **PARAMS[name])

    def evaluate(r, a):
        seen[r] = numpy_of(a)
        states.append({n: getattr(strategy, n) for n in strategy.state_attributes if hasattr(strategy, n)})

    result = strategy.start(grid=FakeGrid([1, 2, 3, 4], lambda m: respond(m)), initial_arrays=arrays_of(
        global_weights()), num_rounds=rounds, train_config=ConfigRecord({}), evaluate_fn=evaluate)
    return strategy, result, seen, states


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_a_round_that_would_make_the_state_non_finite_is_refused_and_later_rounds_move(name):
    strategy, result, seen, states = run(name)
    first = result.train_metrics_clientapp[1]
    assert first["aggregation-nonfinite"] == 1 and first["aggregation-skipped"] == 1
    for key, value in global_weights().items():
        np.testing.assert_array_equal(seen[1][key], value)  # round 1 kept the initial model
    for state in states:
        assert all(finite(v) for v in state.values()), state
    assert result.train_metrics_clientapp[2]["aggregation-skipped"] == 0
    assert not np.allclose(seen[3]["w"], seen[1]["w"])  # not frozen: the honest rounds move the model
    assert all(np.isfinite(seen[r][k]).all() for r in seen for k in seen[r])


def test_flower_rebinds_the_state_each_round_so_references_suffice():
    _, _, _, states = run("fedadam")
    assert states[2]["m_t"] is not states[3]["m_t"] and states[2]["v_t"] is not states[3]["v_t"]


def test_finite_reads_every_container_the_state_uses():
    from flwr.app import Array, ArrayRecord

    assert finite(None) and finite({"a": np.ones(2)}) and finite([np.ones(2)])
    assert not finite({"a": np.array([1.0, np.inf])}) and not finite([np.array([np.nan])])
    assert not finite(ArrayRecord({"a": Array(np.array([np.inf], np.float32))}))
    assert finite({"n": np.array(3, np.int64)})
