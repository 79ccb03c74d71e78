"""CreamFL's keys: what cannot go with representations on the wire is a one-line error."""

from __future__ import annotations

import pytest

from app_config.run_config import ConfigError, RunConfig


@pytest.mark.parametrize(("override", "message"), [
    ({"encoder-layout": "per-modality"}, "encoder-layout: strategy='creamfl'"),
    ({"dp": "server-fixed"}, "dp: strategy='creamfl'"),
    ({"wire-format": "packed"}, "wire-format: strategy='creamfl'"),
    ({"send-encoder-only": True}, "send-encoder-only: strategy='creamfl'"),
    ({"audio-dataset": "", "frac-visual-clients": 1.0, "frac-audio-clients": 0.0, "frac-audiovisual-clients": 0.0},
     "needs a public set of image-audio pairs"),
    ({"creamfl-public-size": 4}, "creamfl-public-size"),
])
def test_conflicts_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig.from_mapping({"strategy": "creamfl", **override})
    assert "\n" not in str(err.value)


def test_defaults_are_the_papers():
    config = RunConfig.from_mapping({"strategy": "creamfl"})
    assert (config.creamfl_tau, config.creamfl_regulariser_weight, config.creamfl_kd_weight) == (0.5, 0.5, 0.3)
