"""ModalityMirror's two phases by round: one definition for the server's rule and the clients' trainer."""

from __future__ import annotations

PHASE_ONE, PHASE_TWO = 1, 2


def mirror_phase(server_round: int, phase1_rounds: int) -> int:
    """1 for rounds ``1 .. phase1_rounds`` (modality-wise FL), 2 after them (distillation); with
    ``phase1_rounds = 0`` (``mirror-phase1-rounds``' "no phase 2") every round is phase 1."""
    if server_round < 1:
        raise ValueError(f"server round: must be >= 1, got {server_round}")
    return PHASE_TWO if phase1_rounds and server_round > phase1_rounds else PHASE_ONE
