"""Modality-wise FedAvg against numbers worked out by hand, and through the strategy shell."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from strategies.aggregation_rule import ClientUpdate
from strategies.modality_wise import ModalityWiseMean, check_prefixes
from strategies.registry import in_shell
from strategies.weighted_mean import weighted_mean
from tests.fake_grid import FakeGrid, arrays_of, numpy_of, train_reply

GLOBAL = {"image.w": np.array([0.0, 0.0], np.float32), "audio.w": np.array([7.0, -1.0], np.float32),
          "audio.bn.num_batches_tracked": np.array(0, np.int64), "head.b": np.array([0.0], np.float32)}

# node -> (arrays, num-image-examples, num-audio-examples): visual-only, audio-only, audio-visual.
# A client's untouched encoder is sent back as it came (the visual client's audio encoder, and so on).
CLIENTS = {
    1: ({"image.w": [1.0, 2.0], "audio.w": [7.0, -1.0], "audio.bn.num_batches_tracked": 0, "head.b": [3.0]},
        10.0, 0.0),
    2: ({"image.w": [0.0, 0.0], "audio.w": [4.0, 8.0], "audio.bn.num_batches_tracked": 5, "head.b": [6.0]},
        0.0, 30.0),
    3: ({"image.w": [3.0, 6.0], "audio.w": [8.0, 0.0], "audio.bn.num_batches_tracked": 8, "head.b": [9.0]},
        30.0, 10.0),
}


def arrays(values: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, GLOBAL[name].dtype) for name, value in values.items()}


def update(node: int, weight: float | None = None) -> ClientUpdate:
    values, n_image, n_audio = CLIENTS[node]
    return ClientUpdate(arrays_of(arrays(values)), n_image + n_audio if weight is None else weight,
                        {"num-image-examples": n_image, "num-audio-examples": n_audio}, node)


def aggregate(rule: ModalityWiseMean, updates: list[ClientUpdate]) -> dict[str, np.ndarray]:
    merged, _ = rule.aggregate(1, arrays_of(GLOBAL), updates)
    assert merged is not None
    return numpy_of(merged)


def test_each_encoder_is_the_mean_over_its_holders_and_shared_arrays_over_all():
    got = aggregate(ModalityWiseMean(), [update(1), update(2), update(3)])
    # image: (10 [1, 2] + 30 [3, 6]) / 40; audio: (30 [4, 8] + 10 [8, 0]) / 40; head: (10 3 + 30 6 + 40 9) / 80
    np.testing.assert_allclose(got["image.w"], [2.5, 5.0])
    np.testing.assert_allclose(got["audio.w"], [5.0, 6.0])
    np.testing.assert_allclose(got["head.b"], [7.125])
    assert got["audio.bn.num_batches_tracked"] == 6 and got["audio.bn.num_batches_tracked"].dtype == np.int64
    # (30 5 + 10 8) / 40 = 5.75, rounded back to the integer dtype
    assert list(got) == list(GLOBAL) and all(got[n].dtype == GLOBAL[n].dtype for n in GLOBAL)


def test_plain_fedavg_over_all_clients_gives_other_numbers():
    got = aggregate(ModalityWiseMean(), [update(1), update(2), update(3)])
    fedavg = numpy_of(weighted_mean([update(1), update(2), update(3)]))
    # FedAvg: (10 [1, 2] + 30 [0, 0] + 40 [3, 6]) / 80 = [1.625, 3.25], pulled towards the unchanged copy
    np.testing.assert_allclose(fedavg["image.w"], [1.625, 3.25])
    assert not np.allclose(fedavg["image.w"], got["image.w"])
    assert not np.allclose(fedavg["audio.w"], got["audio.w"])
    np.testing.assert_allclose(fedavg["head.b"], got["head.b"])  # shared arrays: the same mean


def test_a_modality_nobody_held_keeps_the_global_arrays():
    values, _, _ = CLIENTS[1]
    drifted = ClientUpdate(arrays_of(arrays({**values, "audio.w": [100.0, 100.0]})), 10.0,
                           {"num-image-examples": 10.0, "num-audio-examples": 0.0}, 1)
    merged, metrics = ModalityWiseMean().aggregate(4, arrays_of(GLOBAL), [drifted])
    assert merged is not None
    got = numpy_of(merged)
    np.testing.assert_array_equal(got["audio.w"], GLOBAL["audio.w"])
    np.testing.assert_allclose(got["image.w"], [1.0, 2.0])
    assert metrics == {"modality-wise-clients-image": 1, "modality-wise-clients-audio": 0}
    with pytest.raises(ValueError, match="no global model"):
        ModalityWiseMean().aggregate(1, None, [drifted])


def test_a_capped_update_weight_also_caps_its_modality_weights():
    # node 3's weight capped from 40 to 20: image weight min(30, 20) = 20, audio weight min(10, 20) = 10
    got = aggregate(ModalityWiseMean(), [update(1), update(2), update(3, weight=20.0)])
    np.testing.assert_allclose(got["image.w"], [(10 * 1 + 20 * 3) / 30, (10 * 2 + 20 * 6) / 30], rtol=1e-6)
    np.testing.assert_allclose(got["audio.w"], [5.0, 6.0])
    np.testing.assert_allclose(got["head.b"], [(10 * 3 + 30 * 6 + 20 * 9) / 60])


def test_prefixes_are_a_setting():
    rule = ModalityWiseMean({"image": "vision/", "audio": "sound/"})
    assert rule.required_metrics == ("num-image-examples", "num-audio-examples")
    updates = [ClientUpdate(arrays_of({"vision/w": np.array([2.0]), "sound/w": np.array([1.0])}), 4.0,
                            {"num-image-examples": 4.0, "num-audio-examples": 0.0}),
               ClientUpdate(arrays_of({"vision/w": np.array([0.0]), "sound/w": np.array([5.0])}), 1.0,
                            {"num-image-examples": 0.0, "num-audio-examples": 1.0})]
    merged, _ = rule.aggregate(1, arrays_of({"vision/w": np.array([0.0]), "sound/w": np.array([0.0])}), updates)
    assert merged is not None
    got = numpy_of(merged)
    assert list(got) == ["vision/w", "sound/w"] and got["vision/w"][0] == 2.0 and got["sound/w"][0] == 5.0
    assert rule.modality_of("vision/w") == "image" and rule.modality_of("head.b") is None


def test_bad_prefixes_and_mismatched_updates_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        check_prefixes({})
    with pytest.raises(ValueError, match="could belong to both"):
        check_prefixes({"image": "enc.", "audio": "enc.audio."})
    with pytest.raises(ValueError, match="non-empty"):
        check_prefixes({"image": ""})
    with pytest.raises(ValueError, match="array names"):
        ModalityWiseMean().aggregate(1, arrays_of(GLOBAL), [ClientUpdate(arrays_of({"image.w": GLOBAL["image.w"]}),
                                                                         1.0, {"num-image-examples": 1.0})])
    with pytest.raises(ValueError, match="nothing"):
        ModalityWiseMean().aggregate(1, arrays_of(GLOBAL), [])


def test_no_state():
    rule = ModalityWiseMean()
    assert rule.state_dict() == {}
    rule.load_state_dict({})
    with pytest.raises(ValueError):
        rule.load_state_dict({"momentum": 1})
    assert "image" in rule.describe() and "audio" in rule.describe()


def test_in_the_strategy_shell_a_round_gives_the_hand_computed_model():
    def respond(msg):
        node = msg.metadata.dst_node_id
        values, n_image, n_audio = CLIENTS[node]
        return train_reply(msg, arrays(values), {"loss": 1.0, "num-image-examples": n_image,
                                                 "num-audio-examples": n_audio}, n_image + n_audio)

    seen: dict[int, dict[str, np.ndarray]] = {}
    strategy = in_shell(ModalityWiseMean(), {"fraction_evaluate": 0.0, "min_train_nodes": 3,
                                             "min_available_nodes": 3}, 0.0, 0.0)
    strategy.start(grid=FakeGrid([1, 2, 3], respond), initial_arrays=arrays_of(GLOBAL), num_rounds=1,
                   train_config=ConfigRecord({}), evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    np.testing.assert_allclose(seen[1]["image.w"], [2.5, 5.0])
    np.testing.assert_allclose(seen[1]["audio.w"], [5.0, 6.0])
    np.testing.assert_allclose(seen[1]["head.b"], [7.125])


def test_a_reply_without_the_per_modality_counts_is_dropped():
    def respond(msg):
        node = msg.metadata.dst_node_id
        values, n_image, n_audio = CLIENTS[node]
        if node == 2:
            return train_reply(msg, arrays(values), None, None,
                               extra={"metrics": MetricRecord({"loss": 1.0, "num-examples": 30.0})})
        return train_reply(msg, arrays(values), {"loss": 1.0, "num-image-examples": n_image,
                                                 "num-audio-examples": n_audio}, n_image + n_audio)

    seen: dict[int, dict[str, np.ndarray]] = {}
    strategy = in_shell(ModalityWiseMean(), {"fraction_evaluate": 0.0, "min_train_nodes": 2,
                                             "min_available_nodes": 3}, 0.0, 0.0)
    result = strategy.start(grid=FakeGrid([1, 2, 3], respond), initial_arrays=arrays_of(GLOBAL), num_rounds=1,
                            train_config=ConfigRecord({}),
                            evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    assert result.train_metrics_clientapp[1]["replies-aggregated"] == 2
    np.testing.assert_allclose(seen[1]["image.w"], [2.5, 5.0])  # (10 [1, 2] + 30 [3, 6]) / 40
    np.testing.assert_allclose(seen[1]["audio.w"], [8.0, 0.0])  # node 3 alone
    np.testing.assert_allclose(seen[1]["head.b"], [7.8])  # (10 3 + 40 9) / 50
