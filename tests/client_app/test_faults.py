"""Fault injection: 20 % of client calls raise, the run completes and counts exactly those failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from client_app.faults import InjectedFault, expected_failures, fault_draw, fault_selected, maybe_inject_fault
from experiments.common import superlink_pids
from server_app.round_record import client_value
from tests.conftest import PROJECT

pytestmark = pytest.mark.integration  # starts processes: Flower's runtime, Ray, deployments

PORTS = ["--superlink-port", "39591", "--control-port", "39593"]
SUPERNODES, ROUNDS, RATE, SEED = 10, 2, 0.2, 42
TINY = "encoder='test_resnet' projection-hidden-dim=64 projection-dim=32"  # a 0.4M-parameter CNN: fast rounds


def test_fault_selection_is_a_fixed_function_of_seed_round_and_partition():
    assert fault_draw(1, 2, 3) == fault_draw(1, 2, 3) != fault_draw(1, 2, 4)
    assert not any(fault_selected(SEED, r, p, 0.0) for r in range(5) for p in range(50))
    assert all(fault_selected(SEED, r, p, 1.0) for r in range(5) for p in range(50))
    share = sum(fault_selected(SEED, r, p, RATE) for r in range(1, 51) for p in range(100)) / 5000
    assert abs(share - RATE) < 0.02


def test_injected_fault_raises_only_for_selected_clients():
    from app_config.run_config import RunConfig

    config = RunConfig(fault_rate=RATE, seed=SEED)
    failing = expected_failures(SEED, 1, range(SUPERNODES), RATE)
    for partition in range(SUPERNODES):
        if partition in failing:
            with pytest.raises(InjectedFault, match=f"partition {partition}"):
                maybe_inject_fault(config, 1, partition)
        else:
            maybe_inject_fault(config, 1, partition)
    maybe_inject_fault(RunConfig(), 1, failing[0])  # the default rate never fails


def test_hang_mode_sleeps_past_the_round_timeout_then_raises(monkeypatch):
    import client_app.faults as faults
    from app_config.run_config import RunConfig

    slept = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    config = RunConfig(fault_rate=1.0, fault_mode="hang", round_timeout=30.0)
    with pytest.raises(InjectedFault, match="mode hang"):
        maybe_inject_fault(config, 1, 0)
    assert slept == [30.0 + faults.HANG_EXTRA_SECONDS]


def test_run_with_failing_clients_completes_and_counts_failures_per_round(tmp_path, small_root):  # noqa: F811
    data_root = small_root
    runs, flwr_home = tmp_path / "runs", tmp_path / "flwr"
    config = (f"num-server-rounds={ROUNDS} fault-rate={RATE} seed={SEED} max-local-steps=1 batch-size=8 "
              f"{TINY} eval-every=0 data-root='{data_root}' run-dir='{runs}'")
    done = subprocess.run(
        [sys.executable, "-m", "experiments.launch", "--num-supernodes", str(SUPERNODES), "--flwr-home",
         str(flwr_home), *PORTS, "--timeout", "600", "--run-config", config],
        cwd=PROJECT, capture_output=True, text=True, timeout=700,
    )
    assert superlink_pids(flwr_home) == []  # the launcher stopped its SuperLink
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    (folder,) = runs.iterdir()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    for record in records[1:]:
        failing = expected_failures(SEED, record["round"], range(SUPERNODES), RATE)
        assert failing, "the seed should make some clients fail in every round"
        assert record["failures"] == len(failing)
        assert record["sent"] == SUPERNODES and record["replies"] == SUPERNODES and record["no-reply"] == 0
        errors = [c for c in record["clients"] if "error" in c]
        assert len(errors) == len(failing) and all("injected fault" in c["error"] for c in errors)
        trained = sorted(client_value(c, "partition-id") for c in record["clients"] if "error" not in c)
        assert trained == sorted(set(range(SUPERNODES)) - set(failing))
        train = record["train"]
        assert train["replies-failed"] == len(failing)
        assert train["replies-aggregated"] == SUPERNODES - len(failing)
    assert (folder / "final_model.pt").exists()
