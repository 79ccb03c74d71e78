"""The printed time split of a round: the slowest device's cold start and training, Flower's remainder,
the server's phases."""

from __future__ import annotations

from server_app.round_time import slowest_device, time_split


def _client(node: int, partition: int, ready: float, train: float, **extra: float) -> dict:
    return {"node-id": node, "metrics": {"ready-seconds": ready, "train-seconds": train, **extra},
            "client-info": {"partition-id": partition}}


def _record(*clients: dict, wait: float = 26.3) -> dict:
    return {"round": 2, "phase-seconds": {"configure": 0.12, "wait": wait, "aggregate": 0.21},
            "clients": list(clients), "eval": {"eval-seconds": 3.04}}


def test_the_remainder_of_the_wait_is_flowers():
    slow = _client(5, 2, 10.2, 1.3, **{"import-seconds": 8.5, "model-build-seconds": 0.4,
                                       "augment-setup-seconds": 0.1, "data-load-seconds": 0.2})
    fast = _client(6, 0, 4.0, 6.0)  # longer training, shorter sum: not the slowest
    line = time_split(_record(fast, slow))
    assert line == ("wait 26.3s = slowest device (partition 2) ready 10.2s (imports 8.5s, model 0.4s, views 0.1s, "
                    "data 0.2s) + train 1.3s + rest 14.8s (Flower's polls, process start, transfers; simulation: "
                    "waiting for a worker)"
                    " | configure 0.1s aggregate 0.2s eval 3.0s")


def test_dropped_failed_and_impossible_clients_are_not_the_slowest():
    honest = _client(1, 0, 2.0, 3.0)
    dropped = {**_client(2, 1, 9.0, 9.0), "dropped": "shape"}
    failed = {"node-id": 3, "error": "ClientApp raised"}
    boasting = _client(4, 3, 1.0, 1e15)  # more seconds than the server waited
    negative = _client(5, 4, -50.0, 60.0)
    entry, ready, train = slowest_device(_record(honest, dropped, failed, boasting, negative, wait=10.0))
    assert entry["node-id"] == 1 and (ready, train) == (2.0, 3.0)
    assert "rest 5.0s" in time_split(_record(honest, dropped, failed, boasting, negative, wait=10.0))


def test_a_round_without_phase_times_prints_nothing_and_without_device_times_only_the_server():
    assert time_split({"round": 0, "eval": {"eval-seconds": 1.0}}) == ""
    assert time_split(_record({"node-id": 1, "metrics": {"loss": 1.0}})) == \
        "wait 26.3s | configure 0.1s aggregate 0.2s eval 3.0s"
