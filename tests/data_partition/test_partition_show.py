"""The partition command: statistics, per-client listing, PNG, and its errors."""

from __future__ import annotations

import numpy as np

from data_partition import show
from data_partition.partition import PlanSettings, build_plan


def test_statistics_of_a_known_split():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    from data_partition.partition import ClientPart

    empty = np.zeros(0, np.int64)
    plan = [ClientPart("visual", np.array([0, 1]), empty), ClientPart("audiovisual", np.array([2, 4, 6]), empty),
            ClientPart("audio", empty, np.array([0]))]
    stats = show.modality_stats(plan, "image", labels, 4, seed=0)
    assert stats["clients"] == 2 and stats["per-kind"] == {"visual": 1, "audiovisual": 1} and stats["empty"] == 0
    assert (stats["samples-min"], stats["samples-median"], stats["samples-max"]) == (2, 2.5, 3)
    assert stats["classes-mean"] == 2.0  # one class, then three
    assert np.isclose(stats["tv-mean"], (0.75 + 0.25) / 2)  # TV({0}) = 3/4; TV({1,2,3}) = 1/4
    audio = show.modality_stats(plan + [ClientPart("audiovisual", empty, empty)], "audio", labels, 4, seed=0)
    assert (audio["clients"], audio["empty"], audio["samples-min"], audio["classes-mean"]) == (3, 2, 0, 1.0)


def test_command_prints_statistics_and_writes_png(data_root, tmp_path, capsys):
    out = tmp_path / "plan.png"
    code = show.main(["--num-partitions", "500", "--per-client", "3", "--out", str(out), "--run-config",
                      f"data-root='{data_root}' partitioner='pathological' classes-per-client=2"])
    text = capsys.readouterr().out
    assert code == 0 and out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    assert "plan: 500 clients, partitioner=pathological classes-per-client=2" in text
    assert "clients per kind: visual 200, audio 150, audiovisual 150" in text
    assert "image (digits, 10 classes, data share 1): 350 clients (visual 200, audiovisual 150)" in text
    assert "classes/client: mean 2.00  min 2  max 2" in text
    assert "client    0 " in text and "... 497 more clients" in text
    assert list((data_root / "partitions").glob("plan-*.npz"))  # the run will reuse this plan


def test_command_reports_impossible_plans_and_bad_config(data_root, tmp_path, capsys):
    code = show.main(["--num-partitions", "500", "--out", str(tmp_path / "x.png"),
                      "--run-config", f"data-root='{data_root}' min-partition-size=10"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: image split: ") and err.count("\n") == 1
    assert show.main(["--num-partitions", "5", "--run-config", "partitioner='shards'"]) == 2
    assert "partitioner: unknown value 'shards'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_plot_switches_to_a_heatmap_for_many_classes(tmp_path):
    image = np.repeat(np.arange(100), 20)
    audio = np.repeat(np.arange(35), 30)
    s = PlanSettings(60, 0.4, 0.3, 0.3, "dirichlet", 0.3, 1, 1.0, 1.0, 3)
    plan = build_plan(s, image, audio)
    out = tmp_path / "many.png"
    show.plot(plan, {"image": image, "audio": audio}, {"image": tuple(map(str, range(100))),
              "audio": tuple(map(str, range(35)))}, {"image": "cifar100", "audio": "speech-commands"}, "t", out)
    assert out.read_bytes()[:4] == b"\x89PNG"
