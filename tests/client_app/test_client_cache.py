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
    # the cold start is paid once: model, augmentation and data set-up are timed, then 0 while held
    assert first.setup_seconds["model-build-seconds"] > 0 and first.setup_seconds["data-load-seconds"] > 0
    assert set(again.setup_seconds.values()) == {0.0}
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


def test_a_train_reply_reports_cold_start_resources_and_bytes(data_root, monkeypatch):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

    import client_app.app as client
    from models.factory import build_model
    from tests.fake_grid import task_identity

    config = {"data-root": str(data_root), "max-local-steps": 1, "batch-size": 4}
    monkeypatch.setattr(client, "WORKER", WorkerCache())
    client.WORKER.note_imports(2.5)
    model = build_model(RunConfig.from_mapping(config))
    context = Context(run_id=7, node_id=1, node_config={"partition-id": 9, "num-partitions": 10},
                      state=RecordDict(), run_config=config)

    def message():
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "config": ConfigRecord({"server-round": 1})})
        return Message(content=content, dst_node_id=1, message_type="train")

    with task_identity():
        first = client.train(message(), context).content
        second = client.train(message(), context).content["metrics"]
    metrics, info = first["metrics"], first["client-info"]
    assert metrics["import-seconds"] == 2.5 and metrics["model-build-seconds"] > 0 and metrics["data-load-seconds"] > 0
    assert metrics["ready-seconds"] > 2.5  # imports + set-up before the first step
    assert metrics["peak-rss-mb"] > 100 and metrics["threads"] >= 1 and info["device"] == "cpu"
    model_bytes = sum(a.numpy().nbytes for a in ArrayRecord(model.state_dict()).values())
    assert model_bytes < metrics["bytes-received"] == metrics["bytes-sent"] < model_bytes * 1.01
    assert second["import-seconds"] == 0 and second["model-build-seconds"] == 0 and second["data-load-seconds"] == 0
    assert second["ready-seconds"] < metrics["ready-seconds"]
