"""ModalityMirror's server side (Feng et al. 2024): phase 1 is modality-wise FedAvg, phase 2 moves only the
audio encoder and hands the clients the frozen teacher.

``strategy='modality-wise'`` with ``mirror-phase1-rounds=k``:

* rounds ``1..k`` (every round when ``k = 0``): :class:`~strategies.modality_wise.ModalityWiseMean`;
* rounds after ``k``: the same mean, after which every array outside the audio network is set back to the
  global model's: in phase 2 only the audio student learns, so the image encoder stays as it was at the
  phase boundary whatever a reply claims. Clients that are not audio-visual reply without training and with
  zero per-modality counts (``client_app.mirror_phase``): they succeed, count towards ``min-train-nodes``
  and weigh nothing in either modality's mean.

The teacher. Its image half is the global image encoder, which phase 2 never changes. Its audio half is the
audio encoder as it was at the boundary, which the student has left: the server keeps it (captured from the
model it sends in the first phase-2 round, i.e. the model after phase 1's last aggregated round) and sends
it beside the current model in every phase-2 train message as the ArrayRecord ``mirror-teacher`` (the
audio encoder's float arrays, no head). The same message works in the simulation and on devices, whose
ClientApp processes keep nothing between messages; it costs the audio encoder's bytes once more per
sampled client and phase-2 round: for ``resnet18_half_cifar`` at the default head sizes 11.2 MB beside the
per-modality model's 24.0 MB (the shared model is 12.0 MB), so 35.2 MB down and 24.0 MB up per sampled
client. It is the rule's state, so the checkpoint keeps it and a resumed phase 2 distils from the same
teacher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from app_config.mirror_schedule import mirror_phase
from app_config.modalities import AUDIO
from models.ssl_model import HEAD_PREFIX
from strategies.aggregation_rule import ClientUpdate, RoundMetrics, as_numpy, checked_arrays, refuse_unknown
from strategies.modality_wise import DEFAULT_PREFIXES, ModalityWiseMean
from strategies.rule_strategy import RuleStrategy

TEACHER_KEY = "mirror-teacher"  # the phase-2 train message's ArrayRecord holding the teacher's audio encoder
AUDIO_PREFIX = DEFAULT_PREFIXES[AUDIO]


def is_teacher_array(name: str, array: np.ndarray) -> bool:
    """Whether the teacher needs array ``name``: the audio encoder's float arrays (not its head, not the
    BatchNorm step counters, which evaluation mode never reads)."""
    return name.startswith(AUDIO_PREFIX) and not name.startswith(AUDIO_PREFIX + HEAD_PREFIX) \
        and array.dtype.kind == "f"


def teacher_of(model: ArrayRecord) -> dict[str, np.ndarray]:
    """The teacher's audio-encoder arrays of a global model (copies)."""
    return {name: np.array(array) for name, array in as_numpy(model).items() if is_teacher_array(name, array)}


class MirrorRule(ModalityWiseMean):
    """Modality-wise FedAvg in phase 1; in phase 2 only the audio network moves. State: the teacher."""

    name = "modality-wise"

    def __init__(self, phase1_rounds: int = 0) -> None:
        super().__init__()
        if isinstance(phase1_rounds, bool) or not isinstance(phase1_rounds, int) or phase1_rounds < 0:
            raise ValueError(f"mirror-phase1-rounds: must be an integer >= 0, got {phase1_rounds!r}")
        self.phase1_rounds = phase1_rounds
        self.teacher: dict[str, np.ndarray] | None = None

    def describe(self) -> str:
        phases = (f"; ModalityMirror phase 2 (distillation into the audio encoder) after round {self.phase1_rounds}"
                  if self.phase1_rounds else "")
        return super().describe() + phases

    def phase(self, server_round: int) -> int:
        """1 (modality-wise FL) or 2 (distillation)."""
        return mirror_phase(server_round, self.phase1_rounds)

    def teacher_for(self, server_round: int, sent: ArrayRecord) -> ArrayRecord | None:
        """The teacher record to send with ``sent`` in ``server_round`` (None in phase 1); the first phase-2
        round's ``sent`` (the model after phase 1) becomes the teacher."""
        if self.phase(server_round) == 1:
            return None
        if self.teacher is None:
            self.teacher = teacher_of(sent)
        return ArrayRecord({name: Array(array) for name, array in self.teacher.items()})

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        merged, metrics = super().aggregate(server_round, global_model, updates)
        metrics["mirror-phase"] = self.phase(server_round)
        if self.phase(server_round) == 1 or merged is None:
            return merged, metrics
        if global_model is None:
            raise ValueError("modality-wise phase 2: needs the global model to keep the image encoder")
        out = ArrayRecord()
        for name in merged.keys():
            out[name] = merged[name] if name.startswith(AUDIO_PREFIX) else global_model[name]
        return out, metrics

    def state_dict(self) -> dict:
        return {} if self.teacher is None else {"teacher": dict(self.teacher)}

    def load_state_dict(self, state: Mapping) -> None:
        refuse_unknown(state, ("teacher",), self.name)
        teacher = checked_arrays(state, "teacher", self.name)
        if teacher is not None and not all(is_teacher_array(name, array) for name, array in teacher.items()):
            raise ValueError(f"{self.name} state 'teacher' holds arrays outside the audio encoder")
        self.teacher = teacher


class MirrorStrategy(RuleStrategy):
    """The strategy shell whose phase-2 train messages also carry the teacher (:data:`TEACHER_KEY`)."""

    rule: MirrorRule

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        teacher = self.rule.teacher_for(server_round, arrays)
        if teacher is not None:
            for message in messages:  # one record shared by every message, as Flower shares the model's
                message.content[TEACHER_KEY] = teacher
        return messages
