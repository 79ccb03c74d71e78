"""The scale benchmark's memory watch: samples are attributed to the round running when taken."""

from __future__ import annotations

import time

from benchmarks import tree_memory
from benchmarks.tree_memory import RoundMemory


def test_memory_samples_are_attributed_to_the_running_round(tmp_path, monkeypatch):
    readings = iter(range(100, 10_000, 100))
    monkeypatch.setattr(tree_memory, "tree_rss_by_role",
                        lambda _home: {"ray worker": float(next(readings)), "superlink": 50.0})
    metrics = tmp_path / "runs" / "run-1" / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    with RoundMemory(tmp_path / "flwr", tmp_path / "runs", interval=0.02) as memory:
        for line in range(3):  # rounds 0, 1 and 2 end one after another
            time.sleep(0.15)
            with metrics.open("a") as fh:
                fh.write(f'{{"round": {line}}}\n')
        time.sleep(0.15)
    assert sorted(memory.peaks) == [0, 1, 2, 3]
    assert memory.peaks[0] < memory.peaks[1] < memory.peaks[2] < memory.peaks[3] == memory.peak
    for k in memory.peaks:  # the peak sample, split by role
        assert memory.roles[k]["superlink"] == 50.0
        assert sum(memory.roles[k].values()) == memory.peaks[k]
    assert 0 < memory.first_line_at[1] < memory.first_line_at[2] < memory.first_line_at[3]


def test_process_roles_are_read_from_command_lines():
    from experiments.common import process_role

    assert process_role(["ray::ClientAppActor"]) == "ray worker"
    assert process_role(["/v/bin/python", "/v/bin/flower-superlink", "--insecure"]) == "superlink"
    assert process_role(["/v/bin/python", "/v/bin/flwr-simulation", "--app", "x"]) == "simulation"
    assert process_role(["/v/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet", "--x"]) == "raylet"
    assert process_role(["/v/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server"]) == "gcs"
    assert process_role(["/v/bin/python", "-u", "/v/site-packages/ray/dashboard/agent.py"]) == "ray other"
    assert process_role(["/usr/bin/sleep", "5"]) == "other"
    assert process_role([]) == "other"
