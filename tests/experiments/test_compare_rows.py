"""Two suite rows compared seed by seed: the right rows, paired differences, clear or not."""

from __future__ import annotations

import json

import pytest

from experiments.compare_rows import main, pick_row


def _row(setting: str, knn: list[float], probe: list[float]) -> dict:
    return {"method": "FSSUAVL", "encoder": "enc", "strategy": "fedavg", "setting": setting,
            "per_seed": {str(s): {"knn-image": k, "probe-image": p, "eval-seconds": 9.0}
                         for s, (k, p) in enumerate(zip(knn, probe))}}


ROWS = [_row("update-dtype='float32'", [0.80, 0.82, 0.84], [0.90, 0.91, 0.92]),
        _row("update-dtype='float16'", [0.70, 0.73, 0.74], [0.90, 0.92, 0.91])]


def test_rows_are_picked_by_unique_text():
    assert pick_row(ROWS, "float16")["setting"] == "update-dtype='float16'"
    with pytest.raises(ValueError, match="matches 2 rows"):
        pick_row(ROWS, "update-dtype")
    with pytest.raises(ValueError, match="matches 0 rows"):
        pick_row(ROWS, "bfloat16")


def test_paired_differences_per_metric(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": ROWS}))
    assert main([str(results), "float32", "float16"]) == 0
    out = capsys.readouterr().out
    knn = next(line for line in out.splitlines() if line.startswith("knn-image"))
    probe = next(line for line in out.splitlines() if line.startswith("probe-image"))
    assert "+9.7 [" in knn and knn.endswith("clear") and "no clear" not in knn  # 10, 9, 10 points: clear
    assert "+0.0 [" in probe and probe.endswith("no clear difference")
    assert "eval-seconds" not in out
    assert main([str(results), "float32", "update-dtype"]) == 2
    assert main([str(tmp_path / "missing.json"), "a", "b"]) == 2
