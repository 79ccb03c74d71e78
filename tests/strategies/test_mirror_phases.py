"""ModalityMirror's server side by hand: phase 1 is modality-wise FedAvg, phase 2 keeps everything but the
audio network and sends the phase boundary's audio encoder; the teacher is the rule's checkpointed state."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord

from strategies.aggregation_rule import ClientUpdate
from strategies.mirror_phases import TEACHER_KEY, MirrorRule, MirrorStrategy, teacher_of
from strategies.registry import in_shell
from tests.fake_grid import FakeGrid, arrays_of, numpy_of

GLOBAL = {"image.encoder.w": np.array([0.0, 0.0], np.float32), "image.projector.w": np.array([1.0], np.float32),
          "audio.encoder.w": np.array([7.0, -1.0], np.float32),
          "audio.encoder.bn.num_batches_tracked": np.array(0, np.int64),
          "audio.projector.w": np.array([2.0], np.float32)}


def update(node: int, image: list[float], audio: list[float], n_image: float, n_audio: float) -> ClientUpdate:
    values = {**GLOBAL, "image.encoder.w": np.asarray(image, np.float32),
              "audio.encoder.w": np.asarray(audio, np.float32)}
    return ClientUpdate(arrays_of(values), max(n_image + n_audio, 1.0),
                        {"num-image-examples": n_image, "num-audio-examples": n_audio}, node)


def test_phase_one_is_the_modality_wise_mean():
    rule = MirrorRule(phase1_rounds=2)
    merged, metrics = rule.aggregate(2, arrays_of(GLOBAL), [update(1, [1, 2], [7, -1], 10, 0),
                                                            update(2, [3, 6], [8, 0], 30, 10)])
    got = numpy_of(merged)
    np.testing.assert_allclose(got["image.encoder.w"], [2.5, 5.0])  # (10 [1, 2] + 30 [3, 6]) / 40
    np.testing.assert_allclose(got["audio.encoder.w"], [8.0, 0.0])  # the only audio holder
    assert metrics["mirror-phase"] == 1 and rule.phase(2) == 1 and rule.phase(3) == 2
    assert MirrorRule().phase(10**4) == 1  # mirror-phase1-rounds=0: no phase 2


def test_phase_two_moves_only_the_audio_network_even_if_a_reply_claims_images():
    rule = MirrorRule(phase1_rounds=1)
    claims = update(1, [5, 5], [1, 1], 20, 10)  # a client that says it trained images in phase 2
    idle = update(2, [0, 0], [7, -1], 0, 0)
    merged, metrics = rule.aggregate(2, arrays_of(GLOBAL), [claims, idle])
    got = numpy_of(merged)
    np.testing.assert_array_equal(got["image.encoder.w"], GLOBAL["image.encoder.w"])
    np.testing.assert_array_equal(got["image.projector.w"], GLOBAL["image.projector.w"])
    np.testing.assert_allclose(got["audio.encoder.w"], [1.0, 1.0])  # the idle reply weighs 0
    assert metrics["mirror-phase"] == 2 and metrics["modality-wise-clients-audio"] == 1


def test_the_teacher_is_the_first_phase_two_model_and_never_follows_the_student():
    rule = MirrorRule(phase1_rounds=1)
    assert rule.teacher_for(1, arrays_of(GLOBAL)) is None and rule.state_dict() == {}
    first = numpy_of(rule.teacher_for(2, arrays_of(GLOBAL)))
    assert sorted(first) == ["audio.encoder.w"]  # no head, no integer counters
    moved = {**GLOBAL, "audio.encoder.w": np.array([9.0, 9.0], np.float32)}
    np.testing.assert_array_equal(numpy_of(rule.teacher_for(3, arrays_of(moved)))["audio.encoder.w"], [7.0, -1.0])
    resumed = MirrorRule(phase1_rounds=1)
    resumed.load_state_dict(rule.state_dict())
    np.testing.assert_array_equal(numpy_of(resumed.teacher_for(3, arrays_of(moved)))["audio.encoder.w"], [7.0, -1.0])


@pytest.mark.parametrize(("state", "message"), [
    ({"moments": {}}, "unknown state 'moments'"),
    ({"teacher": {"image.encoder.w": np.zeros(2, np.float32)}}, "outside the audio encoder"),
    ({"teacher": {"audio.encoder.w": np.array([np.nan], np.float32)}}, "NaN or Inf"),
])
def test_a_bad_teacher_state_is_refused_in_one_line(state, message):
    with pytest.raises(ValueError, match=message) as err:
        MirrorRule(1).load_state_dict(state)
    assert "\n" not in str(err.value)


def test_only_phase_two_messages_carry_the_teacher():
    strategy = in_shell(MirrorRule(phase1_rounds=1), {"fraction_train": 1.0, "min_train_nodes": 2,
                                                      "min_available_nodes": 2}, 0.0, 0.0, MirrorStrategy)
    grid = FakeGrid([1, 2], lambda m: m)
    phase1 = list(strategy.configure_train(1, arrays_of(GLOBAL), ConfigRecord(), grid))
    phase2 = list(strategy.configure_train(2, arrays_of(GLOBAL), ConfigRecord(), grid))
    assert all(TEACHER_KEY not in m.content.array_records for m in phase1)
    assert len(phase2) == 2 and all(TEACHER_KEY in m.content.array_records for m in phase2)
    assert numpy_of(phase2[0].content[TEACHER_KEY]).keys() == teacher_of(arrays_of(GLOBAL)).keys()


def test_phase1_rounds_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="mirror-phase1-rounds: must be an integer >= 0"):
        MirrorRule(-1)
