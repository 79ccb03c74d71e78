"""TensorBoard event files: the per-round records read back with TensorBoard's own event reader."""

import json

import pytest

from server_app.run_output import RunOutput
from server_app.tensorboard_log import TensorBoardLog, round_scalars

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator

RECORDS = [
    {"round": 0, "round-seconds": 0.001,
     "eval": {"knn-image": 0.70, "knn-audio": 0.50, "probe-image": 0.80, "probe-audio": 0.60, "eval-seconds": 3.0}},
    {"round": 1, "round-seconds": 12.5, "replies": 4, "failures": 1, "sent": 5, "no-reply": 1,
     "train": {"clients": 3, "clients-image": 2, "clients-audio": 2, "loss": 5.5, "loss-image": 4.0,
               "loss-audio": 3.5, "replies-received": 4, "replies-aggregated": 3, "aggregation-skipped": 0,
               "ldawa-delta-mean": 0.91, "ldawa-delta-min": 0.42, "ldawa-divergence": 0.09,
               "ldawa-divergence-max-client": 0.2, "ldawa-delta/encoder.layer1": 0.95},
     "clients": [{"node-id": 1, "host": "a", "ray-node-id": "n1", "loss": 5.0},
                 {"node-id": 2, "host": "a", "ray-node-id": "n2", "loss": 6.0},
                 {"node-id": 3, "host": "a", "ray-node-id": "n2", "loss": 5.5},
                 {"node-id": 4, "error": "ClientAppException"}]},
    {"round": 2, "round-seconds": 11.0, "replies": 4, "failures": 0,
     "train": {"clients": 4, "loss": 5.0, "loss-image": 3.6, "loss-audio": 3.1, "ldawa-delta-mean": 0.93},
     "eval": {"knn-image": 0.75, "knn-audio": 0.55, "probe-image": 0.85, "probe-audio": 0.65, "eval-seconds": 2.5}},
]


def read_scalars(folder) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_round_scalars_maps_every_section():
    tags = round_scalars(RECORDS[1])
    assert tags["train/loss-image"] == 4.0 and tags["train/loss-audio"] == 3.5
    assert tags["ldawa/delta-mean"] == 0.91 and tags["ldawa/delta/encoder.layer1"] == 0.95
    assert tags["round/failures"] == 1.0 and tags["round/replies"] == 4.0
    assert tags["round/sent"] == 5.0 and tags["round/no-reply"] == 1.0
    assert tags["round/ray-nodes"] == 2.0 and tags["round/hosts"] == 1.0
    assert not any(t.startswith("train/ldawa") for t in tags)


def test_event_files_hold_expected_tags_and_values(tmp_path):
    log = TensorBoardLog(tmp_path)
    for record in RECORDS:
        log.write_round(record)
    log.close()

    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    scalars = read_scalars(tmp_path / "tensorboard")
    expected = {
        "train/loss", "train/loss-image", "train/loss-audio", "train/clients", "train/replies-aggregated",
        "train/aggregation-skipped",
        "ldawa/delta-mean", "ldawa/delta-min", "ldawa/divergence", "ldawa/divergence-max-client",
        "ldawa/delta/encoder.layer1",
        "eval/knn-image", "eval/knn-audio", "eval/probe-image", "eval/probe-audio", "eval/eval-seconds",
        "round/replies", "round/failures", "round/sent", "round/no-reply", "round/seconds", "round/ray-nodes",
        "round/hosts",
    }
    assert expected <= set(scalars), expected - set(scalars)
    assert scalars["eval/probe-image"] == pytest.approx({0: 0.80, 2: 0.85})
    assert scalars["train/loss-audio"] == pytest.approx({1: 3.5, 2: 3.1})
    assert scalars["ldawa/delta-mean"] == pytest.approx({1: 0.91, 2: 0.93})
    assert scalars["round/failures"] == {1: 1.0, 2: 0.0}
    assert scalars["round/ray-nodes"] == {1: 2.0}


def test_config_text_and_run_folder_layout(tmp_path):
    from app_config.run_config import RunConfig

    output = RunOutput.create(str(tmp_path), RunConfig(), run_id=7)
    log = TensorBoardLog(output.folder)
    output.append_round(RECORDS[0])
    log.write_round(RECORDS[0])
    log.close()
    acc = EventAccumulator(str(output.folder / "tensorboard"))
    acc.Reload()
    assert "config/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| strategy | \"fedavg\" |" in text
    # metrics.jsonl and the event file describe the same round
    (line,) = (output.folder / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["eval"]["knn-image"] == pytest.approx(read_scalars(output.folder / "tensorboard")["eval/knn-image"][0])


def test_disabled_log_writes_nothing(tmp_path):
    log = TensorBoardLog(tmp_path, enabled=False)
    log.write_round(RECORDS[1])
    log.close()
    assert not (tmp_path / "tensorboard").exists()


def test_client_values_of_any_type_do_not_break_the_scalars():
    """A list-valued host once raised 'unhashable' in the writer; only strings count as hosts."""
    record = {"round": 1, "clients": [
        {"node-id": 1, "host": ["a", "b"], "ray-node-id": {"x": 1}},  # the flat layout of older records
        {"node-id": 2, "client-info": {"host": "a", "ray-node-id": "n1"}},
        {"node-id": 3, "client-info": {"host": b"a"}, "metrics": {"host": "b"}},
        "not an entry",
    ]}
    tags = round_scalars(record)
    assert tags["round/hosts"] == 2.0 and tags["round/ray-nodes"] == 1.0


def test_resumed_log_purges_the_rounds_after_the_checkpoint(tmp_path):
    """Rounds 0-4 logged, the run resumed from the checkpoint of round 2: rounds 3 and 4 appear once, re-run."""
    log = TensorBoardLog(tmp_path)
    for step in range(5):
        log.write_round({"round": step, "round-seconds": float(step)})
    log.close()
    log = TensorBoardLog(tmp_path, purge_step=3)
    for step in (3, 4, 5):
        log.write_round({"round": step, "round-seconds": 100.0 + step})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    events = [(e.step, e.value) for e in acc.Scalars("round/seconds")]
    assert events == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 103.0), (4, 104.0), (5, 105.0)]
