"""Run config: one documented source of truth, and bad values fail fast naming the key."""

import subprocess
import sys
import time
import tomllib

import pytest

from app_config.run_config import ConfigError, RunConfig, docs_table
from server_app.preflight import checked_run_config
from tests.conftest import PROJECT


def pyproject_config() -> dict:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_equal_the_documented_defaults():
    assert pyproject_config() == RunConfig.keys()


def test_every_key_is_documented():
    table = docs_table()
    for key in RunConfig.keys():
        assert f"`{key}`" in table
    assert RunConfig.from_mapping(pyproject_config()) == RunConfig()


@pytest.mark.parametrize("override, key", [
    ({"strategy": "fedfoo"}, "strategy"),
    ({"frac-visual-clients": 0.5, "frac-audio-clients": 0.5, "frac-audiovisual-clients": 0.5}, "frac-visual-clients"),
    ({"data-root": "/nonexistent/fssuavl-data"}, "data-root"),
    ({"image-dataset": "imagenet-1k"}, "image-dataset"),
    ({"num-server-rounds": "3"}, "num-server-rounds"),
    ({"batch-size": 1}, "batch-size"),
    ({"encoder": "resnet9000"}, "encoder"),
    ({"no-such-key": 1}, "no-such-key"),
])
def test_bad_values_raise_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        checked_run_config({**pyproject_config(), **override})
    message = str(err.value)
    assert key in message and "\n" not in message


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="fedavg.*ldawa|ldawa.*fedavg"):
        RunConfig.from_mapping({"strategy": "nope"})


def test_ints_are_accepted_for_float_keys():
    assert RunConfig.from_mapping({"learning-rate": 1}).learning_rate == 1.0


def test_launcher_fails_fast_on_bad_config_without_starting_flower(tmp_path):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "experiments.launch", "--flwr-home", str(tmp_path / "flwr"),
         "--run-config", "frac-visual-clients=0.9"],
        cwd=PROJECT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "frac-visual-clients" in lines[0]
    assert time.monotonic() - started < 60
    assert not (tmp_path / "flwr").exists()  # no SuperLink state was created


def test_parsing_does_no_io_and_preflight_checks_the_files(tmp_path):
    """A device parses the server's run config without having its files; the preflight checks them once."""
    values = {"data-root": str(tmp_path / "absent"), "resume-from": str(tmp_path / "run"), "encoder": "resnet9000"}
    config = RunConfig.from_mapping(values)
    assert config.data_root == values["data-root"] and not (tmp_path / "absent").exists()
    with pytest.raises(ConfigError, match="^encoder: "):
        checked_run_config(values)


@pytest.mark.parametrize("override, key", [
    ({"temperature": float("inf")}, "temperature"),
    ({"fedopt-eta": float("nan")}, "fedopt-eta"),
    ({"seed": 2**32}, "seed"),
    ({"seed": -1}, "seed"),
    ({"momentum": 1.0}, "momentum"),
    ({"weight-decay": -0.1}, "weight-decay"),
    ({"projection-dim": 0}, "projection-dim"),
    ({"batch-size": 10**7}, "batch-size"),
    ({"image-size": 10**5}, "image-size"),
    ({"num-server-rounds": 10**9}, "num-server-rounds"),
    ({"round-timeout": 1e12}, "round-timeout"),
    ({"learning-rate": 1e6}, "learning-rate"),
    ({"learning-rate": True}, "learning-rate"),
    ({"learning-rate": "fast"}, "learning-rate"),
    ({"dp": "laplace"}, "dp"),
    ({"device": "tpu"}, "device"),
    ({"image-hflip": 1}, "image-hflip"),
])
def test_hardened_bounds_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(override)
    message = str(err.value)
    assert message.startswith(f"{key}:") and "\n" not in message


def test_auto_or_number_keys_and_sane_values_pass():
    config = RunConfig.from_mapping({"learning-rate": "auto", "weight-decay": 0, "seed": 2**32 - 1, "momentum": 0.0,
                                     "device": "cuda:1"})
    assert config.learning_rate == "auto" and config.weight_decay == 0.0 and isinstance(config.weight_decay, float)
    assert RunConfig.from_mapping({"learning-rate": 0.05}).learning_rate == 0.05


def test_run_config_is_a_frozen_hashable_dataclass_checked_on_every_construction():
    import dataclasses

    config = RunConfig()
    assert hash(config) == hash(RunConfig()) and config.as_mapping() == RunConfig.keys()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    with pytest.raises(ConfigError, match="^batch-size: "):
        dataclasses.replace(config, batch_size=1)


def test_train_settings_take_every_value_from_the_run_config():
    import dataclasses

    from ssl_method.local_training import TrainSettings

    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(TrainSettings))
