"""The encoder cost benchmark: its figures are consistent with the model and the table's ratios with its rows."""

from __future__ import annotations

import dataclasses

from app_config.run_config import RunConfig
from benchmarks.encoder_costs import measure, table


def test_measure_gives_the_models_bytes_and_the_merged_latency_for_a_reparameterisable_encoder():
    config = dataclasses.replace(RunConfig(), encoder="audio_repinceptionnext_tiny")
    row = measure(config, repeats=1)
    from flwr.app import ArrayRecord

    from client_app.resources import record_bytes
    from models.factory import build_model
    from strategies.half_precision import narrow_arrays

    arrays = ArrayRecord(build_model(config).state_dict())
    assert row["round-mb"] == 2 * record_bytes(arrays) / 2**20  # out and back, float32, as the ClientApp counts
    assert row["round-mb-float16-replies"] == (record_bytes(arrays) + record_bytes(narrow_arrays(arrays))) / 2**20
    # as serialised: the arrays' own bytes plus one small .npy header per array
    model_bytes = sum(a.numpy().nbytes for a in arrays.values())
    assert 2 * model_bytes / 2**20 < row["round-mb"] < 2 * model_bytes / 2**20 * 1.01
    assert row["round-mb"] * 0.5 < row["round-mb-float16-replies"] < row["round-mb"]
    assert row["params"] == 1_620_384 and row["gflops-audio"] > row["gflops-image"] > 0
    assert row["latency-ms"] > 0 and row["merged-latency-ms"] > 0 and row["step-s"] > 0


def test_the_table_gives_each_step_time_as_a_ratio_to_the_reference():
    rows = [{"encoder": name, "params": 1e6, "gflops-image": 0.1, "gflops-audio": 0.4, "round-mb": 8.0,
             "round-mb-float16-replies": 6.0, "latency-ms": 1.0, "merged-latency-ms": float("nan"),
             "step-s": step, "peak-mb": 100.0} for name, step in (("a", 0.2), ("b", 0.5))]
    text = table(rows, "a")
    assert "| a | 1.00 |" in text and "| 0.500 | 2.50 |" in text and "| - |" in text
