"""ModalityMirror (Feng, Zhang, Avestimehr, Narayanan 2024, arXiv 2408.15803) without Flower: the phase
schedule, the audio-visual teacher's fused features and the distillation loss into the audio student.

What the paper states (its public abstract): two phases. Phase 1 is modality-wise federated learning of
uni-modal encoders, as in Harmony's first stage (Ouyang et al., MobiSys 2023): each encoder is averaged over
the clients that hold its modality (the server's rule: ``strategies.modality_wise``). Phase 2 is federated
knowledge distillation on the multi-modal (audio-visual) clients: an audio-visual teacher (both encoders
and their fusion) teaches a uni-modal audio student, the model that is evaluated on the audio task. There is
no public code, and the loss, temperature, fusion and schedule are not in the public text.

Where the paper is silent this module chooses, for a label-free setting (each choice a setting of
:class:`MirrorSettings`):

* schedule: rounds ``1 .. phase1_rounds`` are phase 1 (every client trains the encoders of the modalities
  it holds with its usual SSL loss); later rounds are phase 2, in which only clients holding both
  modalities take part, since the teacher needs paired samples. The teacher is the model at the end of
  phase 1, frozen; the student starts from that model's audio encoder;
* fusion: the teacher's feature of a paired sample is built from both encoders' L2-normalised features,
  ``concat`` (default) ``[u/|u|, v/|v|] / sqrt(2)``, a unit vector in which each modality weighs the same
  whatever its encoder's width and scale, or ``mean`` ``(u/|u| + v/|v|) / 2`` (equal widths only);
* loss: a supervised teacher distils class posteriors; without classes, what is distilled here is each
  sample's similarity to the other samples of the batch (relational distillation in the manner of CompRess,
  Abbasi Koohpayegani et al. NeurIPS 2020, and SEED, Fang et al. ICLR 2021), each network's similarities in
  its own space, as the student's and the teacher's widths differ. For row ``i`` of a batch of ``B``,
  ``p_i = softmax_{j != i}(cos(t_i, t_j) / T)``, ``q_i = softmax_{j != i}(cos(s_i, s_j) / T)`` and
  ``L_kd = T^2 (1/B) sum_i KL(p_i || q_i)``: Hinton's direction (the teacher is the target) and his
  ``T^2``, which keeps the gradient's size about the same whatever ``T`` (default 0.2, the run's NT-Xent
  temperature). A sample's similarity to itself is left out: it is 1 for every sample and says nothing;
* phase 2's objective: ``distill_weight L_kd + ssl_weight NT-Xent(student's two audio views)``, the
  label-free counterpart of Hinton's mix of the soft-target and the hard-label loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FUSIONS = ("concat", "mean")
MIN_BATCH = 3  # with 2 samples each row's distribution has one element: the loss is always 0


@dataclass(frozen=True)
class MirrorSettings:
    """ModalityMirror's settings, checked on creation with one-line ValueErrors."""

    phase1_rounds: int
    temperature: float = 0.2  # the run's NT-Xent default: cosines / T on the scale the encoders learn
    fusion: str = "concat"
    distill_weight: float = 1.0
    ssl_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.phase1_rounds, bool) or not isinstance(self.phase1_rounds, int) \
                or self.phase1_rounds < 1:
            raise ValueError(f"phase1-rounds: must be an integer >= 1, got {self.phase1_rounds!r}")
        check_temperature(self.temperature)
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion: unknown value {self.fusion!r}; valid: {', '.join(FUSIONS)}")
        for key, value in (("distill-weight", self.distill_weight), ("ssl-weight", self.ssl_weight)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key}: must be a finite number >= 0, got {value!r}")
        if self.distill_weight == 0 and self.ssl_weight == 0:
            raise ValueError("distill-weight and ssl-weight are both 0: phase 2 would train nothing")


def check_temperature(temperature: float) -> None:
    """A one-line ValueError unless ``temperature`` is a finite number > 0."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature: must be a finite number > 0, got {temperature!r}")


def check_features(features: torch.Tensor, name: str) -> None:
    """A one-line ValueError unless ``features`` is a finite ``(batch, width)`` tensor."""
    if features.dim() != 2:
        raise ValueError(f"{name}: expected (batch, width) features, got shape {tuple(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name}: features hold NaN or Inf")


def teacher_features(image: torch.Tensor, audio: torch.Tensor, fusion: str = "concat") -> torch.Tensor:
    """The audio-visual teacher's feature of each paired sample (see the module docstring), without a graph:
    the teacher is frozen."""
    check_features(image, "image features")
    check_features(audio, "audio features")
    if image.shape[0] != audio.shape[0]:
        raise ValueError(f"teacher: {image.shape[0]} image and {audio.shape[0]} audio features are not pairs")
    u, v = F.normalize(image.detach().float(), dim=1), F.normalize(audio.detach().float(), dim=1)
    if fusion == "concat":
        return torch.cat([u, v], dim=1) / math.sqrt(2.0)
    if fusion == "mean":
        if u.shape[1] != v.shape[1]:
            raise ValueError(f"mean fusion needs equal widths, got image {u.shape[1]} and audio {v.shape[1]}")
        return (u + v) / 2
    raise ValueError(f"fusion: unknown value {fusion!r}; valid: {', '.join(FUSIONS)}")


def relational_logits(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """``cos(x_i, x_j) / T`` for every ``j != i``: a ``(B, B - 1)`` tensor, the diagonal left out."""
    z = F.normalize(features.float(), dim=1)
    n = z.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z.device)
    return (z @ z.t() / temperature)[off_diagonal].view(n, n - 1)


def relational_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 (1/B) sum_i KL(p_i || q_i)`` between the teacher's (``p``) and the student's (``q``)
    temperature-softened similarity distributions over the batch; gradients reach the student only."""
    check_temperature(temperature)
    check_features(student, "student features")
    check_features(teacher, "teacher features")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"distillation: {student.shape[0]} student and {teacher.shape[0]} teacher features "
                         "are not the same samples")
    if student.shape[0] < MIN_BATCH:
        raise ValueError(f"distillation: needs a batch of at least {MIN_BATCH} samples, got {student.shape[0]}")
    log_q = F.log_softmax(relational_logits(student, temperature), dim=1)
    log_p = F.log_softmax(relational_logits(teacher.detach(), temperature), dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * temperature ** 2


def phase_two_loss(distillation: torch.Tensor, ssl: torch.Tensor, settings: MirrorSettings) -> torch.Tensor:
    """Phase 2's objective for the student: ``distill_weight L_kd + ssl_weight L_ssl``."""
    return settings.distill_weight * distillation + settings.ssl_weight * ssl
