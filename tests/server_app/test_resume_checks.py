"""Crafted checkpoints and run folders: every one refused with one line, before the interrupted run is touched."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from app_config.run_config import ConfigError, RunConfig
from server_app.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    capture_strategy_state,
    encode,
    load_checkpoint,
    restore_strategy_state,
    save_checkpoint,
)
from server_app.preflight import preflight
from server_app.run_output import RunOutput
from server_app.run_recorder import RunRecorder
from server_app.run_start import load_resume, resume_or_create
from strategies.registry import make_strategy
from tests.fake_grid import arrays_of

MODEL = {"w": np.ones((4, 3), np.float32), "n": np.array(3, dtype=np.int64)}


def interrupted_run(tmp_path, checkpoint_round: int = 2, rounds: int = 4, **fields) -> tuple[RunConfig, RunOutput]:
    """A run folder with six metrics lines and a checkpoint after ``checkpoint_round`` (``fields`` override it)."""
    config = RunConfig(num_server_rounds=rounds, tensorboard=False)
    output = RunOutput.create(str(tmp_path), config, run_id=1)
    for r in range(6):
        output.append_round({"round": r})
    checkpoint = Checkpoint(round=checkpoint_round, arrays=arrays_of(MODEL), strategy_name="fedavg",
                            history=[{"round": r} for r in range(6)], run_config=config.as_mapping())
    for name, value in fields.items():
        setattr(checkpoint, name, value)
    save_checkpoint(output.folder, checkpoint)
    return RunConfig(num_server_rounds=rounds, tensorboard=False, resume_from=str(output.folder)), output


def lines(output: RunOutput) -> int:
    return len(output.metrics_file.read_text().splitlines())


def refused_without_touching(config: RunConfig, output: RunOutput, match: str) -> None:
    before = output.metrics_file.read_bytes()
    with pytest.raises(CheckpointError, match=match) as err:
        resume_or_create(config, 2, load_resume(config), make_strategy("fedavg"), arrays_of(MODEL))
    assert "\n" not in str(err.value)
    assert output.metrics_file.read_bytes() == before  # the interrupted run's record is intact


@pytest.mark.parametrize(("arrays", "match"), [
    ({"w": np.ones((3, 4), np.float32), "n": np.array(3, dtype=np.int64)}, r"array 'w' is \(3, 4\)"),
    ({"w": np.ones((4, 3), np.float32)}, "missing \\['n'\\]"),
    ({"w": np.ones((4, 3), np.float64), "n": np.array(3, dtype=np.int64)}, "float64"),
    ({"w": np.full((4, 3), np.nan, np.float32), "n": np.array(3, dtype=np.int64)}, "NaN or Inf"),
    ({"w": np.full((4, 3), np.inf, np.float32), "n": np.array(3, dtype=np.int64)}, "NaN or Inf"),
])
def test_a_model_that_does_not_fit_is_refused_and_the_run_folder_is_left_as_it_was(tmp_path, arrays, match):
    config, output = interrupted_run(tmp_path, arrays=arrays_of(arrays))
    refused_without_touching(config, output, match)
    assert lines(output) == 6


def test_a_checkpoint_after_the_last_round_is_refused(tmp_path):
    config, output = interrupted_run(tmp_path, checkpoint_round=4, rounds=4)
    refused_without_touching(config, output, "no round is left")


def test_a_bad_strategy_state_or_rng_state_is_refused_before_metrics_are_cut(tmp_path):
    config, output = interrupted_run(tmp_path, strategy_state=encode({"current_arrays": {"w": np.ones(3)}}))
    refused_without_touching(config, output, "strategy state refused: fedavg keeps no state")
    config, output = interrupted_run(tmp_path / "b", rng={"python": {"version": 3}})
    refused_without_touching(config, output, "RNG state cannot be restored")


def test_a_good_resume_cuts_back_only_after_every_check(tmp_path):
    config, output = interrupted_run(tmp_path)
    start = resume_or_create(config, 2, load_resume(config), make_strategy("fedavg"), arrays_of(MODEL))
    assert start.start_round == 3 and lines(output) == 3


def _raw(path, payload) -> None:
    torch.save(payload, path / "checkpoint.pt")


@pytest.mark.parametrize(("payload", "match"), [
    (None, "empty"),  # an empty file
    ({"format": FORMAT_VERSION}, "field 'round' is missing"),
    ({"format": FORMAT_VERSION, "round": 10**9, "arrays": encode(arrays_of(MODEL)), "strategy-name": "fedavg",
      "strategy": {}, "rng": {}, "history-json": "[]", "run-config-json": "{}", "meta-json": "{}"}, "round must be"),
    ({"format": FORMAT_VERSION, "round": -1, "arrays": encode(arrays_of(MODEL)), "strategy-name": "fedavg",
      "strategy": {}, "rng": {}, "history-json": "[]", "run-config-json": "{}", "meta-json": "{}"}, "round must be"),
    ({"format": FORMAT_VERSION, "round": 1, "arrays": encode(arrays_of(MODEL)), "strategy-name": "fedavg",
      "strategy": {}, "rng": {}, "history-json": "not json", "run-config-json": "{}", "meta-json": "{}"},
     "cannot be decoded"),
    ({"format": FORMAT_VERSION, "round": 1, "arrays": encode(arrays_of(MODEL)), "strategy-name": "fedavg",
      "strategy": [], "rng": {}, "history-json": "[]", "run-config-json": "{}", "meta-json": "{}"},
     "strategy-state must be a mapping"),
    ({"format": FORMAT_VERSION, "round": 1, "arrays": encode(arrays_of(MODEL)), "strategy-name": "fedavg",
      "strategy": {}, "rng": {}, "history-json": json.dumps([{"round": "x"}]), "run-config-json": "{}",
      "meta-json": "{}"}, "history must be"),
    ({"format": FORMAT_VERSION, "round": 1, "arrays": encode({}), "strategy-name": "fedavg",
      "strategy": {}, "rng": {}, "history-json": "[]", "run-config-json": "{}", "meta-json": "{}"},
     "arrays must be"),
])
def test_crafted_checkpoint_files_are_one_line_errors_naming_the_field(tmp_path, payload, match):
    if payload is None:
        (tmp_path / "checkpoint.pt").write_bytes(b"")
        match = "cannot be read"
    else:
        _raw(tmp_path, payload)
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(tmp_path)
    assert "\n" not in str(err.value)


def test_non_finite_strategy_state_is_refused_at_restore_and_not_written_at_capture(tmp_path, caplog):
    strategy = make_strategy("fedadam")
    strategy.rule.m, strategy.rule.v = {"w": np.full(3, np.inf)}, {"w": np.ones(3)}
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        capture_strategy_state(strategy)
    fresh = make_strategy("fedadam")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        restore_strategy_state(fresh, encode({"m": {"w": np.full(3, np.nan)}, "v": {"w": np.ones(3)}}))
    # the recorder keeps the previous checkpoint instead of writing one a resume would refuse
    config = RunConfig(num_server_rounds=2, checkpoint_every=1, tensorboard=False)
    recorder = RunRecorder(config, RunOutput.create(str(tmp_path), config, run_id=1), strategy,
                           lambda arrays: {}, flower_run_id=1)
    recorder.write_checkpoint(1, arrays_of(MODEL))
    assert not (recorder.output.folder / "checkpoint.pt").exists()
    assert "checkpoint not written" in caplog.text


@pytest.mark.parametrize(("key", "value", "match"), [
    ("run_dir", "/dev/null", "exists and is not a folder"),
    ("run_dir", "/", "root"),
    ("run_dir", "x\0y", "NUL byte"),
    ("run_dir", "r" * 5000, "5000 characters"),
    ("data_root", "d\0", "NUL byte"),
    ("resume_from", "c" * 5000, "5000 characters"),
])
def test_unusable_paths_are_one_line_config_errors_before_anything_starts(key, value, match):
    with pytest.raises(ConfigError, match=match) as err:
        preflight(RunConfig(**{key: value}))
    assert "\n" not in str(err.value) and str(err.value).startswith(key.replace("_", "-"))


def test_run_dir_under_a_file_or_a_fifo_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    for value in (tmp_path / "file" / "runs", tmp_path / "fifo"):
        with pytest.raises(ConfigError, match="run-dir: .*not a folder"):
            preflight(RunConfig(run_dir=str(value)))
    assert preflight(RunConfig(run_dir=str(tmp_path / "new" / "runs"))).run_dir.endswith("runs")
    assert not (tmp_path / "new").exists()  # checked, not created
