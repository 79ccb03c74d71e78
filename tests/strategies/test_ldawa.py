"""L-DAWA against an independent numpy transcription of the reference (``L-DAWA-Agg.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from strategies.ldawa import LDAWASum, layer_cosine, layer_group, ldawa_aggregate
from strategies.registry import make_strategy
from tests.fake_grid import FakeGrid, arrays_of, numpy_of, train_reply


def reference_ldawa(clients: list[list[np.ndarray]], w_g: list[np.ndarray]) -> list[np.ndarray]:
    """The reference's loop, list-of-layers in, list-of-layers out (norm-0 global -> cosine 1)."""
    c = [[x.astype(np.float64).copy() for x in client] for client in clients]
    for wi in range(len(c)):
        for idx, (x, y) in enumerate(zip(c[wi], w_g)):
            y = y.astype(np.float64)
            if len(x.shape) and len(y.shape) > 0:
                if np.linalg.norm(x) > 0:
                    if np.linalg.norm(y) == 0:
                        v = 1.0  # documented deviation: the reference would divide by zero
                    else:
                        v = (x * y).sum() / (np.linalg.norm(x) * np.linalg.norm(y))
                    c[wi][idx] = x * min(v, 1.0)
    return [sum(layers) / len(c) for layers in zip(*c)]


NAMES = ["encoder.conv1.weight", "encoder.layer1.0.bias", "encoder.bn1.num_batches_tracked", "projector.0.weight",
         "projector.zero"]


def hand_made():
    g = [
        np.array([[1.0, 2.0], [3.0, -1.0]], np.float32),
        np.array([0.5, -0.5, 2.0], np.float32),
        np.array(4, np.int64),  # 0-dim: averaged unscaled
        np.array([1.0, 0.0, 0.0, 1.0], np.float32),
        np.array([1.0, 1.0], np.float32),
    ]
    clients = [
        [np.array([[1.5, 2.0], [2.0, -1.0]], np.float32), np.array([0.4, -0.6, 2.5], np.float32),
         np.array(6, np.int64), np.array([0.0, 1.0, 1.0, 0.0], np.float32),  # orthogonal: delta 0
         np.array([0.0, 0.0], np.float32)],  # norm 0: unscaled (contributes zeros)
        [np.array([[-1.0, -2.0], [-3.0, 1.0]], np.float32),  # opposite: delta -1
         np.array([0.5, -0.5, 2.0], np.float32), np.array(8, np.int64),
         np.array([2.0, 0.0, 0.0, 2.0], np.float32), np.array([3.0, -1.0], np.float32)],
        [np.array([[0.9, 2.2], [3.1, -0.8]], np.float32), np.array([1.0, 0.0, 1.0], np.float32),
         np.array(7, np.int64), np.array([1.0, 0.5, 0.0, 1.0], np.float32), np.array([2.0, 2.0], np.float32)],
    ]
    return g, clients


def as_dict(layers):
    return dict(zip(NAMES, layers))


def test_faithful_formula_matches_the_reference_loop():
    g, clients = hand_made()
    merged, deltas = ldawa_aggregate([as_dict(c) for c in clients], as_dict(g))
    want = reference_ldawa(clients, g)
    for name, w, gl in zip(NAMES, want, g):
        assert merged[name].dtype == gl.dtype and merged[name].shape == gl.shape
        if gl.dtype.kind == "i":
            assert merged[name] == np.rint(w) == 7  # (6 + 8 + 7) / 3, unscaled
        else:
            np.testing.assert_allclose(merged[name], w, rtol=1e-6, atol=1e-7, err_msg=name)
    # Spot values computed by hand: orthogonal layer -> 0, opposite layer -> -1.
    assert deltas["projector.0.weight"][0] == pytest.approx(0.0, abs=1e-12)
    assert deltas["encoder.conv1.weight"][1] == pytest.approx(-1.0)
    assert "encoder.bn1.num_batches_tracked" not in deltas
    # Not data-size weighted: the uniform mean of the identical clients' layer 2 scaled by 1.
    np.testing.assert_allclose(merged["encoder.layer1.0.bias"], want[1], rtol=1e-6)


def test_not_the_same_as_plain_averaging():
    g, clients = hand_made()
    merged, _ = ldawa_aggregate([as_dict(c) for c in clients], as_dict(g))
    plain = np.mean([c[0] for c in clients], axis=0)
    assert not np.allclose(merged["encoder.conv1.weight"], plain, atol=1e-3)


def test_cosine_is_clipped_to_one():
    x = np.full(10, 0.1, np.float32)
    c = x.astype(np.float64)
    raw = c @ c / (np.linalg.norm(c) * np.linalg.norm(c))
    assert raw > 1.0  # rounding pushes the unclipped cosine above 1 here
    assert layer_cosine(x, x) == 1.0
    merged, deltas = ldawa_aggregate([{"w": x}, {"w": x}], {"w": x})
    assert deltas["w"] == [1.0, 1.0]
    np.testing.assert_array_equal(merged["w"], x)


def test_global_layer_of_norm_zero_is_plainly_averaged():
    g = {"bias": np.zeros(3, np.float32)}
    clients = [{"bias": np.array([1.0, 2.0, 3.0], np.float32)}, {"bias": np.array([3.0, 2.0, 1.0], np.float32)}]
    merged, deltas = ldawa_aggregate(clients, g)
    np.testing.assert_allclose(merged["bias"], [2.0, 2.0, 2.0])
    assert deltas["bias"] == [1.0, 1.0]


def test_data_size_weighting_option():
    g, clients = hand_made()
    sizes = [10.0, 30.0, 60.0]
    merged, _ = ldawa_aggregate([as_dict(c) for c in clients], as_dict(g), sizes, weighting=True)
    p = np.array(sizes) / sum(sizes)
    for i, name in enumerate(NAMES):
        gl = g[i].astype(np.float64)
        if gl.ndim == 0:
            want = sum(pk * c[i] for pk, c in zip(p, clients))
            assert merged[name] == np.rint(want)
            continue
        want = 0.0
        for pk, c in zip(p, clients):
            x = c[i].astype(np.float64)
            nx, ng = np.linalg.norm(x), np.linalg.norm(gl)
            d = 1.0 if nx == 0 or ng == 0 else min(x.ravel() @ gl.ravel() / (nx * ng), 1.0)
            want = want + pk * d * x
        np.testing.assert_allclose(merged[name], want, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("weighting", [False, True])
def test_normalise_by_sum_of_deltas_option(weighting):
    rng = np.random.default_rng(3)
    g = {"a": rng.normal(size=(4, 3)).astype(np.float32), "n": np.array(2, np.int64)}
    clients = [{"a": (g["a"] + rng.normal(scale=0.5, size=(4, 3))).astype(np.float32), "n": np.array(k, np.int64)}
               for k in (2, 4, 9)]
    sizes = [1.0, 2.0, 5.0]
    merged, _ = ldawa_aggregate(clients, g, sizes, weighting=weighting, normalise=True)
    coef = np.array(sizes) if weighting else np.ones(3)
    ga = g["a"].astype(np.float64).ravel()
    d = np.array([min(c["a"].astype(np.float64).ravel() @ ga
                      / (np.linalg.norm(c["a"].astype(np.float64)) * np.linalg.norm(ga)), 1.0) for c in clients])
    want = sum(ck * dk * c["a"].astype(np.float64) for ck, dk, c in zip(coef, d, clients)) / np.sum(coef * d)
    np.testing.assert_allclose(merged["a"], want, rtol=1e-6)
    assert merged["n"] == np.rint(sum(ck * k for ck, k in zip(coef, (2, 4, 9))) / coef.sum())
    # Normalising makes a convex combination: unlike the faithful form it is not shrunk by the deltas.
    faithful, _ = ldawa_aggregate(clients, g, sizes, weighting=weighting)
    assert np.linalg.norm(merged["a"]) > np.linalg.norm(faithful["a"])


def test_normalise_falls_back_when_deltas_cancel():
    g = {"a": np.array([1.0, 0.0], np.float32)}
    clients = [{"a": np.array([1.0, 0.0], np.float32)}, {"a": np.array([-1.0, 0.0], np.float32)}]
    merged, _ = ldawa_aggregate(clients, g, normalise=True)  # deltas 1 and -1 sum to 0
    np.testing.assert_allclose(merged["a"], [1.0, 0.0])  # (1*[1,0] + -1*[-1,0]) / K


def test_streams_a_generator_one_client_at_a_time():
    g, clients = hand_made()
    visited = []

    def produce():
        for i, c in enumerate(clients):
            visited.append(i)
            yield arrays_of(as_dict(c))  # ArrayRecords, as replies carry them

    merged, _ = ldawa_aggregate(produce(), arrays_of(as_dict(g)))
    want = reference_ldawa(clients, g)
    np.testing.assert_allclose(merged["projector.zero"], want[4], rtol=1e-6)
    assert visited == [0, 1, 2]


def test_mismatching_client_is_rejected():
    agg = LDAWASum({"a": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="same names"):
        agg.add({"b": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="shape"):
        agg.add({"a": np.ones(4, np.float32)})


def test_layer_groups():
    assert layer_group("encoder.layer3.0.conv1.weight") == "encoder.layer3"
    assert layer_group("projector.2.bias") == "projector"


# ----------------------------------------------------------------- the strategy
def run(strategy, clients, sizes, g, rounds=1):
    nodes = list(range(1, len(clients) + 1))

    def respond(msg):
        node = msg.metadata.dst_node_id
        return train_reply(msg, as_dict(clients[node - 1]), {"loss": 1.0}, sizes[node - 1])

    seen = {}
    result = strategy.start(grid=FakeGrid(nodes, respond), initial_arrays=arrays_of(as_dict(g)), num_rounds=rounds,
                            train_config=ConfigRecord({}),
                            evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    return result, seen


def common(n):
    return {"fraction_evaluate": 0.0, "min_train_nodes": n, "min_available_nodes": n}


def test_strategy_round_and_metrics():
    g, clients = hand_made()
    sizes = [5.0, 50.0, 500.0]
    result, seen = run(make_strategy("ldawa", common=common(3)), clients, sizes, g)
    want = reference_ldawa(clients, g)
    for name, w in zip(NAMES, want):
        np.testing.assert_allclose(seen[1][name], np.rint(w) if np.ndim(w) == 0 else w, rtol=1e-6, atol=1e-7)
    metrics = result.train_metrics_clientapp[1]
    # Independent per-group means of the clipped cosines.
    groups: dict[str, list[float]] = {}
    per_client = [[] for _ in clients]
    for i, name in enumerate(NAMES):
        gl = g[i].astype(np.float64)
        if gl.ndim == 0:
            continue
        for k, c in enumerate(clients):
            x = c[i].astype(np.float64)
            d = 1.0 if np.linalg.norm(x) == 0 or np.linalg.norm(gl) == 0 else \
                min(float(x.ravel() @ gl.ravel() / (np.linalg.norm(x) * np.linalg.norm(gl))), 1.0)
            groups.setdefault(layer_group(name), []).append(d)
            per_client[k].append(d)
    for group, ds in groups.items():
        assert metrics[f"ldawa-delta/{group}"] == pytest.approx(np.mean(ds), abs=1e-9), group
    everything = [d for ds in groups.values() for d in ds]
    assert metrics["ldawa-delta-mean"] == pytest.approx(np.mean(everything))
    assert metrics["ldawa-divergence"] == pytest.approx(1 - np.mean(everything))
    assert metrics["ldawa-divergence-max-client"] == pytest.approx(1 - min(np.mean(p) for p in per_client))
    assert metrics["ldawa-delta-min"] == pytest.approx(-1.0)


def test_warmup_rounds_use_data_size_fedavg():
    g, clients = hand_made()
    sizes = [5.0, 50.0, 500.0]  # 10x the median: the weight cap is turned off to test the formula
    _, seen = run(make_strategy("ldawa", common=common(3), warmup_rounds=1, weight_cap_factor=0), clients, sizes, g,
                  rounds=2)
    p = np.array(sizes) / sum(sizes)
    for i, name in enumerate(NAMES):
        fedavg = sum(pk * c[i].astype(np.float64) for pk, c in zip(p, clients))
        np.testing.assert_allclose(seen[1][name], np.rint(fedavg) if fedavg.ndim == 0 else fedavg, rtol=1e-6)
    # Round 2 measures cosines against round 1's FedAvg model.
    g1 = [seen[1][n] for n in NAMES]
    want = reference_ldawa(clients, g1)
    for name, w in zip(NAMES, want):
        np.testing.assert_allclose(seen[2][name], np.rint(w) if np.ndim(w) == 0 else w, rtol=1e-6, atol=1e-7)


def test_strategy_options_reach_the_aggregation():
    g, clients = hand_made()
    sizes = [5.0, 50.0, 500.0]
    _, seen = run(make_strategy("ldawa", common=common(3), weighting=True, normalise=True, weight_cap_factor=0),
                  clients, sizes, g)
    merged, _ = ldawa_aggregate([as_dict(c) for c in clients], as_dict(g), sizes, weighting=True, normalise=True)
    faithful, _ = ldawa_aggregate([as_dict(c) for c in clients], as_dict(g))
    for name in NAMES:
        np.testing.assert_allclose(seen[1][name], merged[name], rtol=1e-6)
    assert not np.allclose(seen[1]["encoder.conv1.weight"], faithful["encoder.conv1.weight"])
