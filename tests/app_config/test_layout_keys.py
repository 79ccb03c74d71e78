"""The encoder layout and ModalityMirror's keys: defaults that keep the shared run, conflicts in one line."""

from __future__ import annotations

import pytest

from app_config.run_config import ConfigError, RunConfig

MIRROR = {"encoder-layout": "per-modality", "strategy": "modality-wise"}


def test_defaults_keep_the_shared_fssuavl_run():
    config = RunConfig()
    assert config.encoder_layout == "shared" and config.strategy == "fedavg" and config.mirror_phase1_rounds == 0
    assert RunConfig.from_mapping({**MIRROR, "mirror-phase1-rounds": 3}).mirror_fusion == "concat"


@pytest.mark.parametrize(("values", "start"), [
    ({"strategy": "modality-wise"}, "strategy: 'modality-wise' averages each modality's own encoder"),
    ({"mirror-phase1-rounds": 2}, "mirror-phase1-rounds: ModalityMirror's phases need strategy='modality-wise'"),
    ({**MIRROR, "dp": "server-fixed"}, "dp: 'server-fixed' adds noise"),
    ({"encoder-layout": "per-modality", "send-encoder-only": True}, "send-encoder-only: the per-modality layout"),
    ({"encoder-layout": "per-modality", "strategy": "fedvssl"}, "fedvssl-partial-update: not available"),
    ({**MIRROR, "mirror-phase1-rounds": 1, "mirror-distill-weight": 0.0, "mirror-ssl-weight": 0.0},
     "mirror-distill-weight and mirror-ssl-weight are both 0"),
    ({"encoder-layout": "separate"}, "encoder-layout: unknown value 'separate'; valid: shared, per-modality"),
    ({**MIRROR, "mirror-fusion": "sum"}, "mirror-fusion: unknown value 'sum'"),
    ({**MIRROR, "mirror-temperature": 0.0}, "mirror-temperature: must be in (0, 100]"),
    ({**MIRROR, "mirror-phase1-rounds": -1}, "mirror-phase1-rounds: must be in [0, 100000]"),
    ({**MIRROR, "mirror-phase1-rounds": 6, "num-server-rounds": 6},
     "mirror-phase1-rounds: 6 is not below num-server-rounds=6, so phase 2 would never run"),
])
def test_conflicts_are_one_line_errors_naming_the_key(values, start):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(values)
    assert str(err.value).startswith(start) and "\n" not in str(err.value)
