"""FedVSSL's aggregate against its formula, written out independently of the module, through the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from strategies.fedvssl import client_loss, mixing_coefficients
from strategies.registry import make_strategy
from tests.fake_grid import FakeGrid, arrays_of, numpy_of, train_reply
from tests.strategies.replies import global_weights, honest

COMMON = {"fraction_evaluate": 0.0, "min_train_nodes": 3, "min_available_nodes": 3}


def metrics(image_loss: float, audio_loss: float, image_n: float, audio_n: float) -> dict[str, float]:
    return {"loss-image": image_loss, "loss-audio": audio_loss, "num-image-examples": image_n,
            "num-audio-examples": audio_n, "loss": image_loss + audio_loss}


# Three clients: visual-only, audio-only, audio-visual; different sizes and losses.
CLIENTS = {1: (metrics(2.0, 0.0, 30, 0), 30.0), 2: (metrics(0.0, 3.0, 0, 20), 20.0),
           3: (metrics(2.5, 3.5, 10, 15), 25.0)}


def run(strategy, rounds=1, weights=honest, clients=CLIENTS):
    def respond(msg):
        node = msg.metadata.dst_node_id
        values, size = clients[node]
        return train_reply(msg, weights(node), values, size)

    seen = {}
    result = strategy.start(grid=FakeGrid(sorted(clients), respond), initial_arrays=arrays_of(global_weights()),
                            num_rounds=rounds, train_config=ConfigRecord({}),
                            evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    return result, seen


def expected(alpha: float, previous: dict | None, losses: list[float], weights=honest, sizes=(30.0, 20.0, 25.0)):
    """alpha * sum e^-L w / sum e^-L + (1 - alpha) * sum n w / sum n, then (theta + previous) / 2 if given."""
    e = [math.exp(-loss) for loss in losses]
    out = {}
    for name in global_weights():
        ws = [weights(k)[name].astype(np.float64) for k in (1, 2, 3)]
        theta_loss = sum(ek * w for ek, w in zip(e, ws)) / sum(e)
        theta_avg = sum(n * w for n, w in zip(sizes, ws)) / sum(sizes)
        theta = alpha * theta_loss + (1 - alpha) * theta_avg
        if previous is not None:
            theta = (theta + previous[name].astype(np.float64)) / 2
        out[name] = theta
    return out


def close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], np.rint(value) if got[name].dtype.kind == "i" else value, rtol=1e-6)


def test_the_client_loss_is_the_mean_over_trained_modalities_or_their_sum():
    assert client_loss(CLIENTS[1][0]) == 2.0 and client_loss(CLIENTS[2][0]) == 3.0
    assert client_loss(CLIENTS[3][0]) == pytest.approx(3.0) and client_loss(CLIENTS[3][0], "sum") == pytest.approx(6.0)
    with pytest.raises(ValueError, match="no trained modality"):
        client_loss(metrics(1.0, 1.0, 0, 0))


def test_alpha_0_and_beta_0_is_fedavg_exactly():
    _, fedvssl = run(make_strategy("fedvssl", common=COMMON, alpha=0.0, swa=0, weight_cap_factor=0), rounds=2)
    _, fedavg = run(make_strategy("fedavg", common=COMMON, weight_cap_factor=0), rounds=2)
    for r in (1, 2):
        for name in fedavg[r]:
            assert np.array_equal(fedvssl[r][name], fedavg[r][name]), (r, name)


def test_the_mix_follows_the_formula_and_alpha_moves_it():
    losses = [2.0, 3.0, 3.0]  # modality-mean of the three clients
    _, mixed = run(make_strategy("fedvssl", common=COMMON, alpha=0.9, swa=0, weight_cap_factor=0))
    close(mixed[1], expected(0.9, None, losses))
    _, loss_only = run(make_strategy("fedvssl", common=COMMON, alpha=1.0, swa=0, weight_cap_factor=0))
    close(loss_only[1], expected(1.0, None, losses))
    assert not np.allclose(mixed[1]["w"], loss_only[1]["w"])
    _, summed = run(make_strategy("fedvssl", common=COMMON, alpha=1.0, swa=0, loss_reduction="sum",
                                  weight_cap_factor=0))
    close(summed[1], expected(1.0, None, [2.0, 3.0, 6.0]))


def test_equal_losses_and_sizes_make_alpha_irrelevant_but_sizes_still_count():
    same = {k: (metrics(2.0, 0.0, 10, 0), 10.0) for k in (1, 2, 3)}
    results = [run(make_strategy("fedvssl", common=COMMON, alpha=a, swa=0), clients=same)[1][1] for a in (0, .5, 1)]
    for other in results[1:]:
        for name in results[0]:
            np.testing.assert_allclose(other[name], results[0][name], rtol=1e-7)
    # Equal losses but unequal sizes: theta_loss is the unweighted mean (as in the authors' code), so alpha matters.
    sized = {k: (metrics(2.0, 0.0, 10 * k, 0), 10.0 * k) for k in (1, 2, 3)}
    a0 = run(make_strategy("fedvssl", common=COMMON, alpha=0.0, swa=0, weight_cap_factor=0), clients=sized)[1][1]
    a1 = run(make_strategy("fedvssl", common=COMMON, alpha=1.0, swa=0, weight_cap_factor=0), clients=sized)[1][1]
    assert not np.allclose(a0["w"], a1["w"])


def test_swa_with_identical_clients_is_the_mean_of_the_previous_and_the_new_model_from_round_2():
    moved = {"w": global_weights()["w"] + 1.0, "b": global_weights()["b"] - 1.0, "n": np.asarray(5, np.int64)}
    _, seen = run(make_strategy("fedvssl", common=COMMON, alpha=0.9, swa=1), rounds=2, weights=lambda _k: moved)
    close(seen[1], moved)  # round 1: no previous aggregate yet, as in the authors' code
    close(seen[2], {name: (moved[name].astype(np.float64) + seen[1][name]) / 2 for name in moved})


def test_swa_follows_the_formula_with_different_clients():
    _, seen = run(make_strategy("fedvssl", common=COMMON, alpha=0.9, swa=1, weight_cap_factor=0), rounds=2)
    close(seen[2], expected(0.9, seen[1], [2.0, 3.0, 3.0]))


def test_the_output_holds_exactly_the_arrays_of_the_input():
    result, seen = run(make_strategy("fedvssl", common=COMMON, swa=1), rounds=2)
    g = global_weights()
    for r in (1, 2):
        assert list(seen[r]) == list(g)
        assert {k: (v.shape, v.dtype) for k, v in seen[r].items()} == {k: (v.shape, v.dtype) for k, v in g.items()}
    assert len(result.arrays) == len(g)
    assert result.train_metrics_clientapp[2]["fedvssl-swa"] == 1 and result.train_metrics_clientapp[1]["fedvssl-swa"] == 0


def test_coefficients_sum_to_one_and_survive_huge_losses():
    c = mixing_coefficients([1e4, 1e4 + 1, 2e4], [1.0, 2.0, 3.0], alpha=0.9, swa_share=0.0)
    assert math.fsum(c) == pytest.approx(1.0) and all(x > 0 for x in c)
    assert math.fsum(mixing_coefficients([1.0, 2.0], [1.0, 1.0], 0.9, 0.5)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mixing_coefficients([1.0], [1.0], alpha=1.5, swa_share=0.0)


def test_a_reply_without_the_per_modality_losses_is_dropped_and_counted():
    def respond_bare(msg):  # node 2 reports only loss and num-examples
        node = msg.metadata.dst_node_id
        if node == 2:
            return train_reply(msg, honest(2), None, None, extra={"metrics": MetricRecord({"loss": 3.0,
                                                                                           "num-examples": 20.0})})
        values, size = CLIENTS[node]
        return train_reply(msg, honest(node), values, size)

    seen = {}
    result = make_strategy("fedvssl", common={**COMMON, "min_train_nodes": 2}, alpha=0.0, swa=0,
                           weight_cap_factor=0).start(
        grid=FakeGrid([1, 2, 3], respond_bare), initial_arrays=arrays_of(global_weights()), num_rounds=1,
        train_config=ConfigRecord({}), evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    assert result.train_metrics_clientapp[1]["replies-aggregated"] == 2
    want = {name: (30 * honest(1)[name].astype(np.float64) + 25 * honest(3)[name]) / 55 for name in global_weights()}
    close(seen[1], want)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="fedvssl-alpha"):
        make_strategy("fedvssl", common=COMMON, alpha=1.2)
    with pytest.raises(ValueError, match="fedvssl-beta"):
        make_strategy("fedvssl", common=COMMON, swa=2)
    with pytest.raises(ValueError, match="fedvssl-loss"):
        make_strategy("fedvssl", common=COMMON, loss_reduction="max")
