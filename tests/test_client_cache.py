"""Workers keep the model and each partition's data across rounds instead of rebuilding them."""

import numpy as np

from app_config.run_config import RunConfig
from client_app.worker_cache import WorkerCache
from data_partition.federation import federation_part


def test_state_is_reused_across_rounds_and_dropped_for_a_new_run(data_root):
    config = RunConfig.from_mapping({"data-root": str(data_root), "encoder": "resnet18_cifar"})
    cache = WorkerCache()
    first = cache.state(config, run_id=1, partition_id=0, num_partitions=10)
    again = cache.state(config, run_id=1, partition_id=0, num_partitions=10)
    assert again.model is first.model
    assert all(again.data.tensors[m] is first.data.tensors[m] for m in first.data.tensors)

    other = cache.state(config, run_id=1, partition_id=1, num_partitions=10)
    assert other.model is first.model  # one model per worker, weights replaced every round

    new_run = cache.state(config, run_id=2, partition_id=0, num_partitions=10)
    assert new_run.model is not first.model


def test_partitions_of_all_clients_are_disjoint_and_match_their_kind(data_root):
    config = RunConfig.from_mapping({"data-root": str(data_root)})
    seen = {"image": [], "audio": []}
    kinds = []
    for pid in range(10):
        part, data = federation_part(config, pid, 10)
        kinds.append(part.kind)
        seen["image"].extend(part.image_indices.tolist())
        seen["audio"].extend(part.audio_indices.tolist())
        assert ("image" in data.tensors) == (part.kind in ("visual", "audiovisual"))
        assert ("audio" in data.tensors) == (part.kind in ("audio", "audiovisual"))
    assert sorted(kinds) == sorted(["visual"] * 4 + ["audio"] * 3 + ["audiovisual"] * 3)
    for modality, total in (("image", 1437), ("audio", 900)):
        assert len(seen[modality]) == len(set(seen[modality])) == total  # each sample exactly once
    assert np.all(np.asarray(seen["image"]) < 1437)


def test_run_config_is_parsed_once_per_run():
    cache = WorkerCache()
    first = cache.config(1, {"num-server-rounds": 3})
    assert cache.config(1, {"num-server-rounds": 3}) is first
    assert cache.config(2, {"num-server-rounds": 3}) is not first
    assert cache.config(2, {"num-server-rounds": 5}).num_server_rounds == 5
