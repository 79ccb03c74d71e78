"""The server optimisers as rules: Flower's formulas side by side, state that stays finite, a state_dict that resumes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp import strategy as flower

from strategies.aggregation_rule import ClientUpdate
from strategies.aggregation_rule import state_is_finite as finite
from strategies.registry import make_strategy
from strategies.server_optimisers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from tests.fake_grid import FakeGrid, arrays_of, instruction, numpy_of, train_reply
from tests.strategies.replies import global_weights, honest

COMMON = {"fraction_evaluate": 0.0, "min_train_nodes": 4, "min_available_nodes": 4}
# FedAvgM's momentum of a 3e38 round stays finite (it is the bounded-influence tests' case, update bound on).
PARAMS = {"fedadam": {"eta": 0.1}, "fedyogi": {"eta": 0.1}, "fedadagrad": {"eta": 0.1}}

# Non-default settings, so that a setting the rule ignored would change the numbers.
SIDE_BY_SIDE = {
    "fedadam": (lambda: FedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01),
                lambda: flower.FedAdam(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01)),
    "fedyogi": (lambda: FedYogi(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01),
                lambda: flower.FedYogi(eta=0.05, beta_1=0.8, beta_2=0.95, tau=0.01)),
    "fedadagrad": (lambda: FedAdagrad(eta=0.05, tau=0.01), lambda: flower.FedAdagrad(eta=0.05, tau=0.01)),
    "fedavgm": (lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.5),
                lambda: flower.FedAvgM(server_learning_rate=0.7, server_momentum=0.5)),
}
SIZES = (10.0, 40.0, 25.0)


def client_models(server_round: int, model: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(server_round)
    return [{k: (v + rng.normal(scale=0.3, size=v.shape) + 0.1 * i).astype(np.float32) for k, v in model.items()}
            for i in range(len(SIZES))]


@pytest.mark.parametrize("name", sorted(SIDE_BY_SIDE))
def test_each_rule_equals_flowers_class_of_the_same_name_over_three_rounds(name):
    make_rule, make_flower = SIDE_BY_SIDE[name]
    rule, reference = make_rule(), make_flower()
    ours = theirs = global_weights()
    for server_round in (1, 2, 3):
        clients = client_models(server_round, ours)
        updates = [ClientUpdate(arrays_of(c), n) for c, n in zip(clients, SIZES)]
        new, _ = rule.aggregate(server_round, arrays_of(ours), updates)
        if name == "fedavgm":  # Flower's FedAvgM keeps the model it set in its first configure_train
            reference.current_arrays = reference.current_arrays or arrays_of(theirs)
        else:  # Flower's FedOpt takes the model sent from configure_train
            reference.current_arrays = {k: v.copy() for k, v in theirs.items()}
        replies = [train_reply(instruction(i + 1), c, num_examples=n) for i, (c, n) in enumerate(zip(clients, SIZES))]
        flower_new, _ = reference.aggregate_train(server_round, replies)
        ours, theirs = numpy_of(new), numpy_of(flower_new)
        for key in ours:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=2e-5, atol=1e-6, err_msg=f"{name} round {server_round}")
        assert not np.allclose(ours["w"], clients[0]["w"])  # a server step, not one client's model


@pytest.mark.parametrize("name", sorted(SIDE_BY_SIDE))
def test_a_rule_restored_from_its_state_dict_continues_as_the_uninterrupted_one(name):
    make_rule, _ = SIDE_BY_SIDE[name]
    uninterrupted, first = make_rule(), make_rule()
    model = global_weights()
    updates = [ClientUpdate(arrays_of(c), n) for c, n in zip(client_models(1, model), SIZES)]
    after_one, _ = uninterrupted.aggregate(1, arrays_of(model), updates)
    first.aggregate(1, arrays_of(model), updates)
    resumed = make_rule()
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict().keys() == first.state_dict().keys() != set()
    later = [ClientUpdate(arrays_of(c), n) for c, n in zip(client_models(2, numpy_of(after_one)), SIZES)]
    expected, _ = uninterrupted.aggregate(2, after_one, later)
    got, _ = resumed.aggregate(2, after_one, later)
    for key, value in numpy_of(expected).items():
        np.testing.assert_array_equal(numpy_of(got)[key], value)
    fresh, _ = make_rule().aggregate(2, after_one, later)
    assert not np.allclose(numpy_of(fresh)["w"], numpy_of(expected)["w"])  # the state mattered


def test_load_state_dict_refuses_what_the_rule_did_not_write():
    rule = FedAdam()
    with pytest.raises(ValueError, match="unknown state 'current_arrays'"):
        rule.load_state_dict({"current_arrays": {"w": np.ones(2)}})
    with pytest.raises(ValueError, match="NaN or Inf"):
        rule.load_state_dict({"m": {"w": np.array([np.nan])}, "v": {"w": np.ones(1)}})
    with pytest.raises(ValueError, match="same arrays"):
        rule.load_state_dict({"m": {"w": np.ones(2)}})
    with pytest.raises(ValueError, match="float arrays"):
        FedAvgM(server_momentum=0.5).load_state_dict({"momentum": [np.ones(2)]})
    rule.load_state_dict({"m": {"x": np.ones(2)}, "v": {"x": np.ones(2)}})
    with pytest.raises(ValueError, match="does not match the model"):  # a checkpoint of another architecture
        rule.aggregate(1, arrays_of(global_weights()), [ClientUpdate(arrays_of(global_weights()), 1.0)])


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
        states.append(strategy.state_dict())

    result = strategy.start(grid=FakeGrid([1, 2, 3, 4], lambda m: respond(m)), initial_arrays=arrays_of(
        global_weights()), num_rounds=rounds, train_config=ConfigRecord({}), evaluate_fn=evaluate)
    return strategy, result, seen, states


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_an_extreme_but_finite_reply_leaves_the_float64_state_finite_and_later_rounds_move(name):
    """With every defence off, a reply of 3e38 (float32's edge) squares to 9e76: Inf in Flower's float32 state
    (FedAdam froze for the rest of the run), finite in the rules' float64 state."""
    strategy, result, seen, states = run(name)
    assert all(result.train_metrics_clientapp[r]["aggregation-skipped"] == 0 for r in (1, 2, 3))
    assert all(finite(state) for state in states) and set(states[-1]) == {"m", "v"}
    if name != "fedadagrad":  # Adagrad's second moment never decays: one such round shrinks its later steps
        assert not np.allclose(seen[3]["w"], seen[1]["w"])  # not frozen: the honest rounds move the model
    assert all(np.isfinite(seen[r][k]).all() for r in seen for k in seen[r])


@pytest.mark.parametrize("make_rule", [FedAdagrad, FedAdam, FedYogi], ids=["fedadagrad", "fedadam", "fedyogi"])
def test_a_round_that_would_make_the_state_non_finite_raises_and_keeps_the_state(make_rule):
    """Only a float64 model can get there (its replies may hold 1e300, whose square is Inf)."""
    model = {"w": np.zeros(3, np.float64)}
    rule = make_rule()
    rule.aggregate(1, arrays_of(model), [ClientUpdate(arrays_of({"w": np.ones(3)}), 1.0)])
    before = rule.state_dict()
    far = ClientUpdate(arrays_of({"w": np.full(3, 1e300)}), 1.0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        rule.aggregate(2, arrays_of(model), [far])
    for key in ("m", "v"):
        np.testing.assert_array_equal(rule.state_dict()[key]["w"], before[key]["w"])  # nothing committed


def test_fedavgm_momentum_that_would_overflow_raises_and_keeps_the_state():
    rule = FedAvgM(server_learning_rate=1.0, server_momentum=0.9)
    model = {"w": np.zeros(2, np.float64)}
    rule.load_state_dict({"momentum": {"w": np.full(2, 1.7e308)}})
    with pytest.raises(FloatingPointError):
        rule.aggregate(2, arrays_of(model), [ClientUpdate(arrays_of({"w": np.full(2, -1.7e308)}), 1.0)])
    assert rule.state_dict()["momentum"]["w"][0] == 1.7e308


def test_finite_reads_every_container_the_state_uses():
    assert finite(None) and finite({"a": np.ones(2)}) and finite([np.ones(2)])
    assert not finite({"a": np.array([1.0, np.inf])}) and not finite([np.array([np.nan])])
    assert not finite(ArrayRecord({"a": Array(np.array([np.inf], np.float32))}))
    assert finite({"n": np.array(3, np.int64)})
