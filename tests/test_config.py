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
