"""Differential-privacy modes: two rounds through Flower's loop against numpy, the norm bound, the noise's size.

With noise 0 the DP wrappers are deterministic: each update (float arrays
only) is clipped to the norm C, the clipped models are averaged with equal
weights, and the adaptive modes move C by ``exp(-lr (clipped fraction - q))``
after each round. The client modes give the same numbers when the clients run
``dp_clipping_mod``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from app_config.run_config import RunConfig
from client_app.dp_clipping import dp_clipping_mod
from strategies.dp import DP_MODES, WRAPPERS, DPSettings, wrap_dp
from strategies.registry import build_strategy, make_strategy
from tests.fake_grid import FakeGrid, arrays_of, error_reply, numpy_of, train_reply

NODES = [1, 2, 3, 4, 5]
SIZES = {1: 10.0, 2: 40.0, 3: 25.0, 4: 5.0, 5: 20.0}  # ignored by DP: equal weights
C = 1.0
LR, Q = 0.2, 0.5


def initial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32),
            "bn.num_batches_tracked": np.array(6, np.int64)}


def trained(node: int, rnd: int, received: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Local 'training': update norms from ~0.3 to ~3, so some updates are clipped and some are not."""
    rng = np.random.default_rng(10 * rnd + node)
    out = {k: (v + (0.15 * node) * rng.normal(size=v.shape)).astype(v.dtype) for k, v in received.items()
           if v.dtype.kind == "f"}
    out["bn.num_batches_tracked"] = received["bn.num_batches_tracked"] + 50  # the step counter moves a lot
    return out


def respond_plain(msg: Message) -> Message:
    node, rnd = msg.metadata.dst_node_id, int(msg.content["config"]["server-round"])
    return train_reply(msg, trained(node, rnd, numpy_of(msg.content["arrays"])), {"loss": 1.0}, SIZES[node])


def respond_with_mod(msg: Message) -> Message:
    """A client running dp_clipping_mod on its ClientApp."""
    context = Context(run_id=1, node_id=msg.metadata.dst_node_id, node_config={}, state=RecordDict(), run_config={})
    return dp_clipping_mod(msg, context, lambda m, _ctx: respond_plain(m))


def run(strategy, respond, rounds=2, nodes=NODES):
    seen = {}
    result = strategy.start(grid=FakeGrid(nodes, respond), initial_arrays=arrays_of(initial()), num_rounds=rounds,
                            train_config=ConfigRecord({}), evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    return result, seen


def dp_strategy(mode: str, inner: str = "fedavg", noise: float = 0.0, norm: float = C, nodes=NODES, **over):
    common = {"fraction_evaluate": 0.0, "min_train_nodes": len(nodes), "min_available_nodes": len(nodes)}
    settings = DPSettings(mode=mode, noise_multiplier=noise, clipping_norm=norm, sampled_clients=len(nodes),
                          target_quantile=Q, clip_norm_lr=LR, **over)
    return wrap_dp(make_strategy(inner, common=common), settings)


def clip(update: dict[str, np.ndarray], norm: float) -> tuple[dict[str, np.ndarray], bool]:
    total = math.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in update.values()))
    factor = min(1.0, norm / total) if total > 0 else 1.0
    return {k: u * factor for k, u in update.items()}, factor < 1


def reference(rounds: int, adaptive: bool, coordinate=None):
    """Global models after each round and the clipping norms used, from the formulas (float64)."""
    g = {k: v.astype(np.float64) for k, v in initial().items()}
    norm, models, norms = C, [], []
    for rnd in range(1, rounds + 1):
        received = {k: v.astype(initial()[k].dtype) for k, v in g.items()}
        clipped_models, clipped = [], 0
        for node in NODES:
            local = trained(node, rnd, received)
            floats = [k for k in local if k != "bn.num_batches_tracked"]
            update, was = clip({k: local[k].astype(np.float64) - received[k].astype(np.float64) for k in floats},
                               norm)
            clipped += was
            model = {k: received[k].astype(np.float64) + update[k] for k in floats}
            model["bn.num_batches_tracked"] = local["bn.num_batches_tracked"].astype(np.float64)
            clipped_models.append(model)
        norms.append(norm)
        if adaptive:
            norm *= math.exp(-LR * (clipped / len(NODES) - Q))
        combine = coordinate or (lambda xs: np.mean(xs, axis=0))
        g = {k: combine(np.stack([m[k] for m in clipped_models])) for k in g}
        g["bn.num_batches_tracked"] = np.rint(g["bn.num_batches_tracked"])
        models.append({k: v.copy() for k, v in g.items()})
    return models, norms


def assert_models(seen, models):
    for rnd, want in enumerate(models, start=1):
        for k, v in want.items():
            assert seen[rnd][k].dtype == initial()[k].dtype, k
            np.testing.assert_allclose(seen[rnd][k], v, rtol=1e-5, atol=1e-6, err_msg=f"round {rnd} {k}")


# ------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("inner, coordinate", [("fedavg", None), ("fedmedian", lambda xs: np.median(xs, axis=0))])
def test_server_fixed_clipping_matches_numpy(inner, coordinate):
    _, seen = run(dp_strategy("server-fixed", inner), respond_plain)
    models, _ = reference(2, adaptive=False, coordinate=coordinate)
    assert_models(seen, models)


def test_client_fixed_clipping_with_the_mod_gives_the_server_side_numbers():
    result, seen = run(dp_strategy("client-fixed"), respond_with_mod)
    models, _ = reference(2, adaptive=False)
    assert_models(seen, models)
    # the mod reports whether each client was clipped: here some are, some are not
    assert 0 < result.train_metrics_clientapp[1]["norm_bit"] < 1


@pytest.mark.parametrize("mode, respond", [("server-adaptive", respond_plain), ("client-adaptive", respond_with_mod)])
def test_adaptive_clipping_matches_numpy(mode, respond):
    strategy = dp_strategy(mode)
    _, seen = run(strategy, respond)
    models, norms = reference(2, adaptive=True)
    assert_models(seen, models)
    assert norms[1] != C  # the reference did adapt the norm, so round 2's numbers test the adaptation
    # after round 2 the norm moved once more by the same rule
    flower = strategy.strategy  # Flower's wrapper, unchanged, owns the norm
    assert flower.clipping_norm == pytest.approx(norms[1] * math.exp(-LR * (_clipped_fraction(2, norms[1]) - Q)))


def _clipped_fraction(rnd: int, norm: float) -> float:
    models, _ = reference(rnd - 1, adaptive=True)
    received = {k: v.astype(initial()[k].dtype) for k, v in models[-1].items()}
    count = 0
    for node in NODES:
        local = trained(node, rnd, received)
        update = {k: local[k].astype(np.float64) - received[k].astype(np.float64) for k in ("w", "b")}
        count += clip(update, norm)[1]
    return count / len(NODES)


def test_the_global_update_respects_the_norm_bound_and_the_step_counter_does_not_count():
    """Noise 0: the mean of clipped updates has norm <= C, although num_batches_tracked moved by 50."""
    _, seen = run(dp_strategy("server-fixed", norm=0.5), respond_plain, rounds=1)
    g = initial()
    moved = math.sqrt(sum(float(np.sum((seen[1][k].astype(np.float64) - g[k]) ** 2)) for k in ("w", "b")))
    assert moved <= 0.5 + 1e-6
    # Had the counter's +50 counted towards the norm, every update would be scaled by ~0.5 / 50.
    assert moved > 0.1
    assert int(seen[1]["bn.num_batches_tracked"]) == 56  # averaged, never clipped or noised


def test_noise_has_the_calibrated_standard_deviation_and_a_zero_update_is_fine():
    """Clients sending the model back unchanged (update norm 0): the aggregate is the model plus N(0, sigma C / m)."""
    big = {"w": np.zeros((200, 100), np.float32), "n": np.array(3, np.int64)}
    sigma, norm, nodes = 2.0, 0.5, [1, 2, 3, 4]

    def echo(msg):
        return train_reply(msg, numpy_of(msg.content["arrays"]), {"loss": 1.0}, 10.0)

    np.random.seed(0)
    strategy = dp_strategy("server-fixed", noise=sigma, norm=norm, nodes=nodes)
    result = strategy.start(grid=FakeGrid(nodes, echo), initial_arrays=arrays_of(big), num_rounds=1,
                            train_config=ConfigRecord({}))
    out = numpy_of(result.arrays)
    noise = out["w"].astype(np.float64)
    assert abs(noise.mean()) < 0.01
    assert noise.std() == pytest.approx(sigma * norm / len(nodes), rel=0.03)
    assert int(out["n"]) == 3


# ------------------------------------------------------------------------------------------ replies
def test_bad_replies_are_dropped_before_clipping_instead_of_skipping_the_round():
    """Flower's DP wrappers skip the round on one error reply and raise on a reply of another shape."""
    def respond(msg):
        node = msg.metadata.dst_node_id
        if node == 6:
            return error_reply(msg)
        if node == 7:
            return train_reply(msg, {"w": np.zeros(3, np.float32)}, {"loss": 1.0}, 10.0)
        return respond_plain(msg)

    result, seen = run(dp_strategy("server-fixed"), respond, rounds=1, nodes=NODES + [6, 7])
    metrics = result.train_metrics_clientapp[1]
    assert metrics["replies-failed"] == 1 and metrics["replies-dropped-shape"] == 1
    assert metrics["replies-aggregated"] == len(NODES) and metrics["aggregation-skipped"] == 0
    models, _ = reference(1, adaptive=False)
    assert_models(seen, models)


def test_client_adaptive_drops_replies_without_norm_bit():
    def respond(msg):
        return respond_plain(msg) if msg.metadata.dst_node_id == 5 else respond_with_mod(msg)

    result, _ = run(dp_strategy("client-adaptive"), respond, rounds=1)
    metrics = result.train_metrics_clientapp[1]
    assert metrics["replies-dropped-metrics"] == 1 and metrics["replies-aggregated"] == 4


def test_client_modes_send_the_clipping_norm_and_server_modes_do_not():
    for mode, sent in (("client-fixed", True), ("client-adaptive", True), ("server-fixed", False)):
        grid = FakeGrid(NODES, respond_with_mod)
        dp_strategy(mode).start(grid=grid, initial_arrays=arrays_of(initial()), num_rounds=1,
                                train_config=ConfigRecord({}))
        assert all(("clipping_norm" in m.content["config"]) == sent for m in grid.sent), mode


def test_mod_passes_other_messages_through():
    from flwr.app import MessageType

    calls = []

    def app(msg, ctx):
        calls.append(msg)
        return train_reply(msg, {"w": np.ones(2, np.float32) * 100}, {"loss": 1.0}, 1.0)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    arrays = arrays_of({"w": np.zeros(2, np.float32)})
    plain = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}), 1, MessageType.TRAIN)
    evaluate = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"clipping_norm": 1.0})}), 1,
                       MessageType.EVALUATE)
    for msg in (plain, evaluate):
        reply = dp_clipping_mod(msg, context, app)
        assert numpy_of(reply.content["arrays"])["w"].tolist() == [100.0, 100.0]
        assert "norm_bit" not in reply.content["metrics"]
    bad = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"clipping_norm": -1.0})}), 1,
                  MessageType.TRAIN)
    assert dp_clipping_mod(bad, context, app).has_error() and len(calls) == 2


# ------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("mode", DP_MODES)
def test_build_strategy_wraps_the_chosen_strategy(mode):
    from strategies.rule_strategy import RuleStrategy
    from strategies.server_optimisers import FedAdam

    config = type("Config", (), {**dataclasses.asdict(dataclasses.replace(RunConfig(), strategy="fedadam")),
                                 "dp": mode, "dp_clipped_count_stddev": 1.0})()
    strategy = build_strategy(config)
    if mode == "none":
        assert isinstance(strategy, RuleStrategy) and isinstance(strategy.rule, FedAdam)
        assert not strategy.trusted_replies
    else:
        flower = strategy.strategy  # the adapter holds Flower's wrapper, of Flower's own class, around FedAdam
        assert type(flower) is WRAPPERS[mode] and type(flower).__module__.startswith("flwr.")
        assert flower.strategy is strategy.inner and isinstance(strategy.inner.rule, FedAdam)
        assert strategy.inner.trusted_replies
        assert flower.num_sampled_clients == RunConfig().min_train_nodes


@pytest.mark.parametrize("field, value, key", [
    ("mode", "laplace", "dp:"), ("noise_multiplier", -1.0, "dp-noise-multiplier:"),
    ("clipping_norm", 0.0, "dp-clipping-norm:"), ("sampled_clients", -2, "dp-sampled-clients:"),
    ("target_quantile", 1.5, "dp-target-quantile:"), ("clip_norm_lr", 0.0, "dp-clip-norm-lr:"),
    ("clipped_count_stddev", -1.0, "dp-clipped-count-stddev:"),
])
def test_invalid_dp_settings_are_one_line_errors_naming_the_key(field, value, key):
    with pytest.raises(ValueError) as err:
        DPSettings(**{field: value}).check()
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_adaptive_noise_too_large_for_the_count_noise_names_the_key():
    with pytest.raises(ValueError, match="^dp-clipped-count-stddev: server-adaptive with dp-noise-multiplier 1.0"):
        dp_strategy("server-adaptive", noise=1.0)
    assert dp_strategy("server-adaptive", noise=1.0, clipped_count_stddev=1.0).strategy.noise_multiplier > 1.0


def test_dp_defaults_match_the_registry_table():
    defaults = RunConfig.keys()
    default = DPSettings()
    for key, attr in (("dp", "mode"), ("dp-noise-multiplier", "noise_multiplier"),
                      ("dp-clipping-norm", "clipping_norm"), ("dp-sampled-clients", "sampled_clients"),
                      ("dp-target-quantile", "target_quantile"), ("dp-clip-norm-lr", "clip_norm_lr"),
                      ("dp-clipped-count-stddev", "clipped_count_stddev")):
        assert defaults[key] == getattr(default, attr), key
