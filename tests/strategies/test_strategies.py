"""Registry and one/two-round results of every registered strategy vs independent numpy.

Each strategy runs through Flower's own ``Strategy.start`` loop against a fake
grid whose clients answer with hand-made arrays; the expected global models are
computed here from the published formulas with plain numpy (float64).
"""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message

from app_config.run_config import ConfigError, RunConfig
from strategies.aggregation_rule import AggregationRule
from strategies.flower_rules import FlowerAggregation
from strategies.registry import STRATEGIES, STRATEGY_KEYS, build_strategy, make_strategy, unused_strategy_keys
from strategies.rule_strategy import RuleStrategy
from tests.conftest import PROJECT
from tests.fake_grid import FakeGrid, arrays_of, numpy_of, train_reply

ALL = ["fedavg", "ldawa", "fedvssl", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian", "fedtrimmedavg",
       "krum", "multikrum", "bulyan"]
NODES = [1, 2, 3, 4, 5, 6, 7]  # Bulyan with f = 1 needs 4f + 3 = 7 replies
SIZES = {1: 10.0, 2: 40.0, 3: 25.0, 4: 5.0, 5: 20.0, 6: 30.0, 7: 15.0}

# Non-default values, so a parameter that is not wired through would change the numbers.
PARAMS = dict(proximal_mu=0.3, server_learning_rate=0.7, server_momentum=0.5, fedopt_eta=0.05,
              fedopt_beta1=0.8, fedopt_beta2=0.95, fedopt_tau=0.01, trimmed_beta=0.2,
              ldawa_warmup_rounds=0, fedvssl_alpha=0.7, fedvssl_beta=1, fraction_evaluate=0.0, min_train_nodes=len(NODES))
# Robust strategies' keys, set away from their defaults too.
NEW = dict(num_malicious_nodes=1, multikrum_select=3)


def initial_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "encoder.conv1.weight": rng.normal(size=(3, 2, 2)).astype(np.float32),
        "encoder.layer1.bias": rng.normal(size=(4,)).astype(np.float32),
        "projector.0.weight": rng.normal(size=(2, 3)).astype(np.float32),
    }


def client_weights(node: int, server_round: int, received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Deterministic local 'training': the received model plus a node/round-specific step."""
    rng = np.random.default_rng(100 * server_round + node)
    return {k: (v + rng.normal(scale=0.2, size=v.shape) + 0.05 * node).astype(v.dtype) for k, v in received.items()}


def config(name: str, **over):
    """A RunConfig with PARAMS and NEW."""
    return dataclasses.replace(RunConfig(), strategy=name, **{**PARAMS, **NEW, **over})


def run_rounds(strategy, rounds: int, respond=None):
    """Run ``rounds`` rounds through Flower's loop; return (result, grid, globals seen by evaluate_fn)."""

    def default(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        received = numpy_of(msg.content["arrays"])
        rnd = int(msg.content["config"]["server-round"])
        return train_reply(msg, client_weights(node, rnd, received), {"loss": 1.0}, SIZES[node])

    grid = FakeGrid(NODES, respond or default)
    seen: dict[int, dict[str, np.ndarray]] = {}

    def evaluate(server_round, arrays):
        seen[server_round] = numpy_of(arrays)
        return None

    result = strategy.start(grid=grid, initial_arrays=arrays_of(initial_weights()), num_rounds=rounds,
                            train_config=ConfigRecord({}), evaluate_fn=evaluate)
    return result, grid, seen


# ---------------------------------------------------------------- references
def wmean(ws, ns):
    return sum(n * w for w, n in zip(ws, ns)) / sum(ns)


def ldawa_layer(ws, g):
    out = 0.0
    for w in ws:
        cos = float(np.sum(w * g) / (np.linalg.norm(w) * np.linalg.norm(g)))
        out = out + min(cos, 1.0) * w
    return out / len(ws)


def krum_scores(flat: list[np.ndarray], f: int) -> np.ndarray:
    """Blanchard et al.: each vector's sum of squared distances to its n - f - 2 nearest others."""
    n = len(flat)
    closest = max(1, n - f - 2)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((flat[i] - flat[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[:closest]))
    return np.asarray(scores)


def bulyan_layer(ws: list[np.ndarray], beta: int) -> np.ndarray:
    """Per coordinate: the mean of the beta values nearest the coordinate-wise median."""
    stack = np.stack(ws)
    med = np.median(stack, axis=0)
    order = np.argsort(np.abs(stack - med), axis=0, kind="stable")[:beta]
    return np.take_along_axis(stack, order, axis=0).mean(axis=0)


def reference(name: str, rounds: int) -> list[dict[str, np.ndarray]]:
    """Global model after each round, from the formulas (float64 numpy)."""
    p, f = PARAMS, NEW["num_malicious_nodes"]
    g = {k: v.astype(np.float64) for k, v in initial_weights().items()}
    state: dict = {}
    history = []
    for rnd in range(1, rounds + 1):
        received = {k: v.astype(np.float32) for k, v in g.items()}  # what the clients get
        clients = [{k: v.astype(np.float64) for k, v in client_weights(n, rnd, received).items()} for n in NODES]
        ns = [SIZES[n] for n in NODES]
        new = {}
        if name in ("krum", "multikrum", "bulyan"):
            flat = [np.concatenate([c[k].ravel() for k in g]) for c in clients]
            best = np.argsort(krum_scores(flat, f), kind="stable")
            take = {"krum": 1, "multikrum": NEW["multikrum_select"], "bulyan": len(NODES) - 2 * f}[name]
            chosen = sorted(best[:take])
            for k in g:
                ws = [clients[i][k] for i in chosen]
                if name == "bulyan":
                    new[k] = bulyan_layer(ws, take - 2 * f)
                else:
                    new[k] = wmean(ws, [ns[i] for i in chosen])
            g = new
            history.append({k: v.copy() for k, v in g.items()})
            continue
        for k, gk in g.items():
            ws = [c[k] for c in clients]
            avg = wmean(ws, ns)
            if name in ("fedavg", "fedprox"):
                new[k] = avg
            elif name == "ldawa":
                new[k] = ldawa_layer(ws, gk)
            elif name == "fedvssl":  # Rehman et al.: equal client losses, so theta_loss is the plain mean
                theta = p["fedvssl_alpha"] * np.mean(np.stack(ws), axis=0) + (1 - p["fedvssl_alpha"]) * avg
                new[k] = (theta + gk) / 2 if p["fedvssl_beta"] and rnd > 1 else theta
            elif name == "fedmedian":
                new[k] = np.median(np.stack(ws), axis=0)
            elif name == "fedtrimmedavg":
                cut = int(p["trimmed_beta"] * len(ws))
                new[k] = np.sort(np.stack(ws), axis=0)[cut:len(ws) - cut].mean(axis=0)
            elif name == "fedavgm":  # Hsu et al.: v = beta v + (g - avg); g -= lr v
                pg = gk - avg
                state[k] = pg if k not in state else p["server_momentum"] * state[k] + pg
                new[k] = gk - p["server_learning_rate"] * state[k]
            else:  # FedOpt family (Reddi et al.), delta = avg - g
                delta = avg - gk
                m, v = state.get(("m", k), 0.0), state.get(("v", k), 0.0)
                if name == "fedadagrad":
                    m, v = delta, v + delta**2
                    step = p["fedopt_eta"]
                else:
                    b1, b2 = p["fedopt_beta1"], p["fedopt_beta2"]
                    m = b1 * m + (1 - b1) * delta
                    if name == "fedadam":
                        v = b2 * v + (1 - b2) * delta**2
                        # Flower's bias correction counts from server_round + 1.
                        step = p["fedopt_eta"] * np.sqrt(1 - b2 ** (rnd + 1)) / (1 - b1 ** (rnd + 1))
                    else:  # fedyogi
                        v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
                        step = p["fedopt_eta"]
                state[("m", k)], state[("v", k)] = m, v
                new[k] = gk + step * m / (np.sqrt(v) + p["fedopt_tau"])
        g = new
        history.append({k: v.copy() for k, v in g.items()})
    return history


# ---------------------------------------------------------------- registry
# needs encoder-layout='per-modality' and image./audio. names: tests/strategies/test_mirror_phases.py
MODALITY_WISE = ["modality-wise"]
# replies with public-set representations and needs its server side: tests/strategies/test_creamfl_strategy.py
CREAMFL = ["creamfl"]


def test_registry_holds_every_name():
    assert sorted(STRATEGIES) == sorted(ALL + MODALITY_WISE + CREAMFL)


def test_unknown_strategy_name_fails_listing_valid_ones():
    with pytest.raises(ValueError, match="unknown value 'fedsgd'.*fedadagrad, fedadam, fedavg"):
        make_strategy("fedsgd")
    with pytest.raises(ConfigError, match="strategy: unknown value 'FedAvg'; valid: .*ldawa"):
        dataclasses.replace(RunConfig(), strategy="FedAvg").validate()


def test_unknown_strategy_parameter_fails_listing_valid_ones():
    with pytest.raises(ValueError, match="'fedadam': unknown parameter 'momentum'; valid: beta_1, beta_2, eta, tau"):
        make_strategy("fedadam", momentum=0.9)
    with pytest.raises(ValueError, match="'fedavg': unknown parameter 'proximal_mu'; valid: none"):
        make_strategy("fedavg", proximal_mu=0.1)
    strategy = make_strategy("fedprox", proximal_mu=0.25)
    assert strategy.rule.proximal_mu == 0.25


@pytest.mark.parametrize("name", ALL)
def test_build_strategy_takes_parameters_from_config(name):
    strategy = build_strategy(config(name))
    assert isinstance(strategy, RuleStrategy) and isinstance(strategy.rule, AggregationRule)
    for kw, key in STRATEGIES[name].params.items():
        # the rule's own setting, or that of the Flower strategy the adapter runs (strategies.flower_rules)
        holder = strategy.rule.strategy if isinstance(strategy.rule, FlowerAggregation) else strategy.rule
        assert getattr(holder, kw) == getattr(config(name), key.replace("-", "_")), (name, kw)
    assert strategy.min_train_nodes == len(NODES)


def test_strategy_keys_ignored_by_the_chosen_strategy_are_reported():
    cfg = dataclasses.replace(RunConfig(), strategy="fedavg", proximal_mu=0.5)
    assert unused_strategy_keys(cfg) == ["proximal-mu"]
    assert unused_strategy_keys(dataclasses.replace(cfg, strategy="fedprox")) == []
    assert unused_strategy_keys(RunConfig()) == []


def test_every_strategy_parameter_is_a_documented_config_key_in_pyproject():
    """Every key a strategy takes is a RunConfig key (the single source), documented, with pyproject's default."""
    pyproject = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig.keys()
    for key in sorted(STRATEGY_KEYS):
        assert key in defaults, key
        assert pyproject[key] == defaults[key], key
        assert RunConfig.docs()[key]


@pytest.mark.parametrize("field,value,key", [
    ("proximal_mu", -0.1, "proximal-mu"),
    ("server_learning_rate", 0.0, "server-learning-rate"),
    ("server_momentum", 1.0, "server-momentum"),
    ("fedopt_eta", 0.0, "fedopt-eta"),
    ("fedopt_beta1", 1.0, "fedopt-beta1"),
    ("fedopt_beta2", -0.1, "fedopt-beta2"),
    ("fedopt_tau", 0.0, "fedopt-tau"),
    ("trimmed_beta", 0.5, "trimmed-beta"),
])
def test_invalid_strategy_parameter_gives_one_line_error_naming_the_key(field, value, key):
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(RunConfig(), **{field: value}).validate()
    assert str(err.value).startswith(f"{key}:")
    assert "\n" not in str(err.value)


def test_ldawa_options_are_off_by_default():
    assert RunConfig().ldawa_weighting is False and RunConfig().ldawa_normalise is False
    strategy = build_strategy(dataclasses.replace(RunConfig(), strategy="ldawa"))
    assert strategy.rule.weighting is False and strategy.rule.normalise is False


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("name", ALL)
def test_two_rounds_match_independent_numpy(name):
    result, grid, seen = run_rounds(build_strategy(config(name)), rounds=2)
    expected = reference(name, 2)
    for rnd in (1, 2):
        got = seen[rnd]
        assert set(got) == set(expected[rnd - 1])
        for k, want in expected[rnd - 1].items():
            assert got[k].dtype == np.float32 and got[k].shape == want.shape, (name, k)
            np.testing.assert_allclose(got[k], want, rtol=2e-5, atol=2e-6, err_msg=f"{name} round {rnd} {k}")
    # Sanity: the strategies do differ from each other (the comparison can fail).
    if name not in ("fedavg", "fedprox"):
        fedavg = reference("fedavg", 1)[0]
        assert any(not np.allclose(fedavg[k], seen[1][k], atol=1e-4) for k in fedavg), name
    assert len(grid.sent) == 2 * len(NODES)


def test_reference_of_fedavgm_and_fedadam_uses_state_across_rounds():
    """Guard for the test itself: round 2 of the stateful references differs from a stateless restart."""
    for name in ("fedavgm", "fedadam"):
        two = reference(name, 2)[1]
        assert not np.allclose(two["projector.0.weight"], reference("fedavg", 2)[1]["projector.0.weight"])


def test_fedprox_sends_mu_to_clients():
    _, grid, _ = run_rounds(build_strategy(config("fedprox")), rounds=1)
    assert all(m.content["config"]["proximal-mu"] == PARAMS["proximal_mu"] for m in grid.sent)
    _, grid, _ = run_rounds(build_strategy(config("fedavg")), rounds=1)
    assert all("proximal-mu" not in m.content["config"] for m in grid.sent)


@pytest.mark.parametrize("name", ALL)
def test_integer_and_0dim_buffers_keep_shape_and_dtype(name):
    """BatchNorm's ``num_batches_tracked`` (0-dim int64) survives every strategy's arithmetic."""
    init = {**initial_weights(), "bn.num_batches_tracked": np.array(6, dtype=np.int64)}

    def respond(msg):
        node = msg.metadata.dst_node_id
        received = numpy_of(msg.content["arrays"])
        weights = client_weights(node, 1, {k: v for k, v in received.items() if v.ndim})
        weights["bn.num_batches_tracked"] = received["bn.num_batches_tracked"] + 4
        return train_reply(msg, weights, {"loss": 1.0}, SIZES[node])

    strategy = build_strategy(config(name))
    grid = FakeGrid(NODES, respond)
    result = strategy.start(grid=grid, initial_arrays=arrays_of(init), num_rounds=2, train_config=ConfigRecord({}))
    out = numpy_of(result.arrays)
    assert out["bn.num_batches_tracked"].shape == () and out["bn.num_batches_tracked"].dtype == np.int64
    if name in ("fedavg", "fedprox", "ldawa", "fedmedian", "fedtrimmedavg"):
        assert int(out["bn.num_batches_tracked"]) == 14  # 6 + 4 + 4: averaged, never scaled
    assert all(out[k].dtype == np.float32 for k in initial_weights())


def test_train_metrics_are_aggregated_with_replies_counts():
    result, _, _ = run_rounds(build_strategy(config("fedavg")), rounds=1)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["clients"] == len(NODES)
    assert metrics["replies-received"] == len(NODES) and metrics["replies-aggregated"] == len(NODES)
    assert metrics["aggregation-skipped"] == 0


# ---------------------------------------------------------------- FedProx on the client
def test_proximal_term_value_and_gradient():
    import torch

    from client_app.proximal import proximal_mu, proximal_term

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    start = [p.detach().numpy().copy() for p in model.parameters()]
    term = proximal_term(model, 0.4)
    assert float(term(model)) == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    now = [p.detach().numpy().astype(np.float64) for p in model.parameters()]
    want = 0.2 * sum(np.sum((a - b) ** 2) for a, b in zip(now, start))
    value = term(model)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    value.backward()
    for p, a, b in zip(model.parameters(), now, start):
        np.testing.assert_allclose(p.grad.numpy(), 0.4 * (a - b), rtol=1e-5, atol=1e-6)
    assert proximal_term(model, 0.0) is None
    assert proximal_mu(ConfigRecord({"server-round": 1})) == 0.0
    assert proximal_mu(ConfigRecord({"proximal-mu": 0.3})) == 0.3
    with pytest.raises(ValueError, match="proximal-mu"):
        proximal_term(model, -1.0)


def test_client_train_adds_the_proximal_term_when_the_server_sends_mu(monkeypatch):
    import types

    import torch
    from flwr.app import Context, RecordDict

    import client_app.app as client

    model = torch.nn.Linear(3, 2)
    state = types.SimpleNamespace(model=model, data=types.SimpleNamespace(modalities=("image",), count=lambda m: 7,
                                                                                total=lambda: 7),
                                  views={}, device=torch.device("cpu"), kind="visual",
                                  setup_seconds={})
    monkeypatch.setattr(client.WORKER, "state", lambda *a, **k: state)
    captured = {}

    def fake_train(model, data, views, settings, device, seed, extra_loss=None):
        captured["extra_loss"] = extra_loss
        with torch.no_grad():
            model.weight.add_(1.0)  # 'training' moves 6 weights by 1
        return {"loss": 0.0}

    monkeypatch.setattr(client, "train_locally", fake_train)
    monkeypatch.setattr(client, "train_settings", lambda *a, **k: types.SimpleNamespace(learning_rate=0.1))
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    for mu, expect in ((0.5, 0.5 / 2 * 6), (None, None)):
        config = {"server-round": 1} if mu is None else {"server-round": 1, "proximal-mu": mu}
        msg = Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)}),
                      dst_node_id=1, message_type="train")
        reply = client.train(msg, context)
        assert reply.content["metrics"]["num-examples"] == 7.0
        if expect is None:
            assert captured["extra_loss"] is None
        else:
            np.testing.assert_allclose(float(captured["extra_loss"](model)), expect, rtol=1e-6)


@pytest.mark.parametrize(("values", "expected"), [
    ({"strategy": "bulyan"}, "bulyan with num-malicious-nodes=0 tolerates no Byzantine client (bulyan then averages"),
    ({"strategy": "krum"}, "krum with num-malicious-nodes=0"),
    ({"strategy": "fedtrimmedavg"}, "trims nothing from a round of fewer than 5 replies (min-train-nodes is 2)"),
    ({"strategy": "fedtrimmedavg", "trimmed_beta": 0.0}, "trims nothing from a round of any size"),
])
def test_robust_strategies_that_defend_against_nothing_say_so(values, expected):
    from strategies.registry import inert_defences

    lines = inert_defences(RunConfig(**values))
    assert len(lines) == 1 and expected in lines[0] and "\n" not in lines[0]


def test_robust_strategies_set_to_defend_say_nothing():
    from strategies.registry import inert_defences

    assert inert_defences(RunConfig(strategy="bulyan", num_malicious_nodes=1)) == []
    assert inert_defences(RunConfig(strategy="fedtrimmedavg", min_train_nodes=5)) == []
    assert inert_defences(RunConfig(strategy="fedavg")) == []
