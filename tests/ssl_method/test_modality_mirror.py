"""ModalityMirror's distillation loss, fusion and schedule against formulas written out by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from app_config.mirror_schedule import mirror_phase as phase_of
from ssl_method.modality_mirror import (
    MirrorSettings,
    phase_two_loss,
    relational_distillation,
    teacher_features,
)
from tests.conftest import PROJECT

STUDENT = [[1.0, 0.0], [0.6, 0.8], [-1.0, 0.5], [0.2, -0.9]]
TEACHER = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.2], [-0.3, 0.4, 1.0], [0.9, 0.1, -0.2]]


def cosines(rows: list[list[float]]) -> list[list[float]]:
    unit = [[x / math.sqrt(sum(y * y for y in row)) for x in row] for row in rows]
    return [[sum(a * b for a, b in zip(u, v)) for v in unit] for u in unit]


def softmax_over_others(row: list[float], i: int, t: float, with_self: bool = False) -> list[float]:
    exps = [math.exp(value / t) for j, value in enumerate(row) if j != i or with_self]
    return [e / sum(exps) for e in exps]


def hand_loss(student, teacher, t: float, *, t_squared: bool = True, swapped: bool = False,
              with_self: bool = False) -> float:
    """T^2 / B sum_i KL(p_i || q_i), p the teacher's and q the student's similarity softmax over j != i;
    ``t_squared=False``, ``swapped=True`` and ``with_self=True`` are plausible wrong formulas."""
    cs, ct = cosines(student), cosines(teacher)
    total = 0.0
    for i in range(len(student)):
        q, p = softmax_over_others(cs[i], i, t, with_self), softmax_over_others(ct[i], i, t, with_self)
        if swapped:
            p, q = q, p
        total += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q))
    return total / len(student) * (t * t if t_squared else 1.0)


def loss(student, teacher, t: float) -> float:
    return relational_distillation(torch.tensor(student), torch.tensor(teacher), t).item()


@pytest.mark.parametrize("t", [0.1, 0.5, 2.0])
def test_matches_the_hand_written_formula(t):
    assert loss(STUDENT, TEACHER, t) == pytest.approx(hand_loss(STUDENT, TEACHER, t), rel=1e-5)


def test_a_fixed_number():
    # pinned, so a change to the hand formula above cannot hide a change in the module
    assert loss(STUDENT, TEACHER, 0.5) == pytest.approx(0.087361, rel=1e-4)


def test_plausible_wrong_formulas_give_other_numbers():
    got = loss(STUDENT, TEACHER, 0.5)
    assert abs(got - hand_loss(STUDENT, TEACHER, 0.5, t_squared=False)) > 0.2  # T^2 left out: x4
    assert abs(got - hand_loss(STUDENT, TEACHER, 0.5, swapped=True)) > 1e-3  # KL(q || p)
    assert abs(got - hand_loss(STUDENT, TEACHER, 0.5, with_self=True)) > 1e-3  # self-similarity kept


def test_t_squared_keeps_a_finite_limit_at_high_temperature():
    """For large T, T^2 KL(p || q) -> 1/(2n) sum_j (d_j - mean d)^2 per row (d = teacher - student cosine,
    n = B - 1 others), Hinton's high-temperature limit; without T^2 the loss would vanish."""
    cs, ct = cosines(STUDENT), cosines(TEACHER)
    rows = []
    for i in range(len(STUDENT)):
        d = [ct[i][j] - cs[i][j] for j in range(len(STUDENT)) if j != i]
        mean = sum(d) / len(d)
        rows.append(sum((x - mean) ** 2 for x in d) / (2 * len(d)))
    assert loss(STUDENT, TEACHER, 100.0) == pytest.approx(sum(rows) / len(rows), rel=1e-2)


def test_zero_when_the_student_has_the_teachers_relational_structure():
    teacher = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(1)))
    student = 3.0 * teacher @ rotation  # rotated and scaled: the same cosines
    assert relational_distillation(student, teacher, 0.2).item() == pytest.approx(0.0, abs=1e-5)
    # concatenation of equal image and audio features has the audio features' cosines
    audio = torch.tensor(STUDENT)
    fused = teacher_features(audio, 2.0 * audio)
    assert fused.shape == (4, 4)
    assert relational_distillation(audio, fused, 0.5).item() == pytest.approx(0.0, abs=1e-6)
    assert relational_distillation(audio, torch.tensor(TEACHER), 0.5).item() > 0.01


def test_gradients_reach_only_the_student():
    torch.manual_seed(0)
    image_encoder, audio_teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 5), torch.nn.Linear(4, 2)
    images, sounds = torch.randn(6, 4), torch.randn(6, 4)
    teacher = teacher_features(image_encoder(images), audio_teacher(sounds))
    relational_distillation(student(sounds), teacher, 0.5).backward()
    assert all(p.grad is None for p in [*image_encoder.parameters(), *audio_teacher.parameters()])
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in student.parameters())
    # a teacher tensor that still carries a graph is detached by the loss too
    raw = torch.tensor(TEACHER, requires_grad=True)
    relational_distillation(torch.tensor(STUDENT, requires_grad=True), raw * 1.0, 0.5).backward()
    assert raw.grad is None


def test_fusion_by_hand():
    image, audio = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(teacher_features(image, audio), torch.tensor([[0.6 * r, 0.8 * r, 0.0, r]]))
    torch.testing.assert_close(teacher_features(image, audio, "mean"), torch.tensor([[0.3, 0.9]]))
    with pytest.raises(ValueError, match="equal widths"):
        teacher_features(image, torch.ones(1, 3), "mean")
    with pytest.raises(ValueError, match="not pairs"):
        teacher_features(torch.ones(2, 2), audio)
    with pytest.raises(ValueError, match="unknown"):
        teacher_features(image, audio, "sum")


def test_bad_inputs_are_refused_in_one_line():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    for student, teacher, temperature, message in [
            (s, t[:3], 0.5, "not the same samples"), (s, t, 0.0, "temperature"), (s, t, -1.0, "temperature"),
            (s, t, math.inf, "temperature"), (s[:2], t[:2], 0.5, "at least 3"),
            (s.clone().fill_(math.nan), t, 0.5, "NaN or Inf"), (s, t.clone().fill_(math.inf), 0.5, "NaN or Inf"),
            (s[0], t, 0.5, "batch, width")]:
        with pytest.raises(ValueError, match=message) as error:
            relational_distillation(student, teacher, temperature)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="NaN or Inf"):
        teacher_features(torch.full((2, 2), math.nan), torch.ones(2, 2))


def test_settings_are_checked():
    assert MirrorSettings(phase1_rounds=3).fusion == "concat"
    for kwargs, message in [({"phase1_rounds": 0}, "phase1-rounds"), ({"phase1_rounds": True}, "phase1-rounds"),
                            ({"temperature": 0.0}, "temperature"), ({"temperature": math.nan}, "temperature"),
                            ({"distill_weight": -0.1}, "distill-weight"), ({"ssl_weight": -1.0}, "ssl-weight"),
                            ({"distill_weight": 0.0, "ssl_weight": 0.0}, "both 0"), ({"fusion": "max"}, "fusion")]:
        with pytest.raises(ValueError, match=message):
            MirrorSettings(**{"phase1_rounds": 2, **kwargs})


def test_phase_two_loss_weighs_both_terms():
    settings = MirrorSettings(phase1_rounds=1, distill_weight=0.5, ssl_weight=2.0)
    assert phase_two_loss(torch.tensor(4.0), torch.tensor(1.5), settings).item() == pytest.approx(5.0)


def test_schedule():
    assert [phase_of(r, 3) for r in (1, 2, 3, 4, 10)] == [1, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        phase_of(0, 3)


def test_imports_no_flower():
    code = ("import sys, ssl_method.modality_mirror\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('flwr', 'ray')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_no_phase_two_when_phase_one_is_the_whole_run():
    assert [phase_of(r, 0) for r in (1, 2, 100)] == [1, 1, 1]  # mirror-phase1-rounds=0, as the server's rule
