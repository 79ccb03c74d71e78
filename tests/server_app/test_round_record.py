"""metrics.jsonl: client values in their own namespace, strict JSON whatever the clients sent."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ConfigRecord

from server_app.run_output import RunOutput, json_line, json_safe
from tests.fake_grid import error_reply, instruction, train_reply


def strict_loads(line: str):
    """json.loads that refuses NaN / Infinity tokens (not JSON)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=refuse)


def hostile_reply(node: int = 7):
    reply = train_reply(instruction(node), {"w": np.zeros(2, np.float32)}, {"loss": 1.0, "node-id": 999.0}, 10.0,
                        extra={"client-info": ConfigRecord({"partition-id": 3, "host": b"\x00\xff",
                                                            "kind": "x" * 10_000_000, "pid": [1, 2]})})
    reply.content["metrics"].__dict__["_data"]["loss"] = float("nan")  # as a non-validating deserialiser may
    return reply


def test_client_values_cannot_replace_server_keys():
    from server_app.round_record import client_entries

    entries = client_entries([hostile_reply(7), error_reply(instruction(8), "ClientApp raised")], [9],
                             dropped={7: "client-info"})
    assert [e["node-id"] for e in entries] == [7, 8, 9]
    first = entries[0]
    assert first["metrics"]["node-id"] == 999.0 and first["dropped"] == "client-info"
    assert first["metrics"]["loss"] is None  # NaN
    assert first["client-info"]["host"] == "<2 bytes>" and first["client-info"]["pid"] == [1, 2]
    assert len(first["client-info"]["kind"]) == 256 + 3  # cut, marked with "..."
    assert entries[1] == {"node-id": 8, "error": "ClientApp raised"}
    assert "no reply" in entries[2]["error"]
    line = json_line({"round": 1, "clients": entries})
    assert len(line) < 2_000
    assert strict_loads(line)["clients"][0]["node-id"] == 7


def test_client_value_reads_both_layouts():
    from server_app.round_record import client_value

    assert client_value({"node-id": 1, "client-info": {"kind": "audio"}, "metrics": {"loss": 2.0}}, "kind") == "audio"
    assert client_value({"node-id": 1, "metrics": {"loss": 2.0}}, "loss") == 2.0
    assert client_value({"node-id": 1, "kind": "visual"}, "kind") == "visual"  # records written before
    assert client_value({"node-id": 1}, "node-id") is None and client_value({}, "x", 5) == 5


def test_metrics_lines_are_strict_json_with_nan_as_null(tmp_path):
    output = RunOutput(tmp_path)
    output.append_round({"round": 1, "eval": {"knn-image": float("nan"), "probe": float("inf")},
                         "clients": [{"node-id": 1, "host": b"raw"}], "n": np.float32(0.5), "a": np.arange(2)})
    record = strict_loads(output.metrics_file.read_text())
    assert record["eval"] == {"knn-image": None, "probe": None}
    assert record["clients"][0]["host"] == "<3 bytes>" and record["n"] == 0.5 and record["a"] == [0, 1]


def test_json_safe_bounds_containers_and_depth():
    nested: list = []
    for _ in range(20):
        nested = [nested]
    assert json.dumps(json_safe(nested))  # no recursion error
    assert json_safe(list(range(100)), max_items=3) == [0, 1, 2]
    assert json_safe({"k" * 10: "v" * 10}, max_string=4) == {"kkkk": "vvvv..."}
    assert json_safe(object()).startswith("<object object")


def test_a_long_wrapped_error_keeps_its_head_and_last_line():
    from server_app.round_record import MAX_STRING, error_text

    reason = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m"
              + "\n  File x.py, line 1, in run" * 40 + "\nInjectedFault: injected fault (mode raise) in round 2'>")
    text = error_text(reason)
    assert len(text) <= MAX_STRING and "\x1b" not in text and "\n" not in text
    assert text.startswith("<class 'ray.exceptions.RayTaskError") and text.endswith("in round 2'>")
    assert error_text("short reason") == "short reason"


def test_round_line_of_a_one_modality_federation_shows_only_its_loss():
    from server_app.run_output import format_round

    line = format_round({"round": 2, "train": {"loss-image": 1.25, "clients": 4.0}, "round-seconds": 3.0})
    assert line == "round   2 | loss img 1.250 | 4 clients | 3.0s" and "nan" not in line
    both = format_round({"round": 1, "train": {"loss-image": 1.0, "loss-audio": 2.0, "clients": 2.0}})
    assert both == "round   1 | loss img 1.000 aud 2.000 | 2 clients"


def test_round_line_names_the_slowest_client():
    from server_app.run_output import format_round

    clients = [{"node-id": 11, "client-info": {"partition-id": 3}, "metrics": {"train-seconds": 2.0}},
               {"node-id": 12, "client-info": {"partition-id": 7}, "metrics": {"train-seconds": 9.75}},
               {"node-id": 13, "error": "no reply"}]
    line = format_round({"round": 1, "round-seconds": 12.0, "clients": clients})
    assert line == "round   1 | 12.0s | slowest: partition 7 (node 12) 9.8s"
    assert "slowest" not in format_round({"round": 1, "clients": clients[:1]})


def test_an_accepted_reply_cannot_claim_more_train_seconds_than_the_round_lasted():
    from server_app.run_output import format_round
    from server_app.tensorboard_log import round_scalars

    clients = [{"node-id": 11, "client-info": {"partition-id": 3}, "metrics": {"train-seconds": 2.0}},
               {"node-id": 12, "client-info": {"partition-id": 7}, "metrics": {"train-seconds": 9.75}},
               {"node-id": 66, "client-info": {"partition-id": 1}, "metrics": {"train-seconds": 1e15}}]
    record = {"round": 1, "clients": clients, "phase-seconds": {"wait": 10.0}}
    line = format_round(record)
    assert "slowest: partition 7 (node 12) 9.8s" in line
    assert "1 client(s) reported more train seconds than the round's wait (ignored), e.g. partition 1 " \
           "(node 66) 1e+15s" in line
    assert round_scalars(record)["clients/train-seconds-max"] == 9.75
    assert "ignored" not in format_round({**record, "clients": clients[:2]})


def test_a_dropped_replys_own_numbers_name_no_slowest_client_and_no_device_maximum():
    """Reports can be spoofed: a reply the filter dropped said train-seconds 1e15 and 1e12 MB of memory."""
    from server_app.run_output import format_round
    from server_app.tensorboard_log import round_scalars

    clients = [{"node-id": 11, "client-info": {"partition-id": 3}, "metrics": {"train-seconds": 2.0,
                                                                            "peak-rss-mb": 900.0}},
               {"node-id": 12, "client-info": {"partition-id": 7}, "metrics": {"train-seconds": 3.0,
                                                                            "peak-rss-mb": 800.0}},
               {"node-id": 66, "client-info": {"partition-id": 1}, "dropped": "nonfinite",
                "metrics": {"train-seconds": 1e15, "peak-rss-mb": 1e12}}]
    record = {"round": 1, "clients": clients}
    assert format_round(record).endswith("| slowest: partition 7 (node 12) 3.0s")
    scalars = round_scalars(record)
    assert scalars.get("clients/peak-rss-mb-max") == 900.0
