"""Fault injection for tests and experiments (run-config ``fault-rate``, ``fault-mode``).

Whether a client's train call fails is a pure function of ``(seed, round,
partition)`` -- a SHA-256 hash mapped to [0, 1) and compared with
``fault-rate`` -- so a test knows in advance which clients fail in which round
and can check the server's per-round failure counts exactly. Python's ``hash``
is not used: it is salted per process for strings.

``fault-mode``:

* ``raise``: the ClientApp raises :class:`InjectedFault`; the server gets an
  error reply;
* ``hang``: the client sleeps ``round-timeout + HANG_EXTRA_SECONDS`` before
  raising, so the server stops waiting and counts it as a missing reply.
"""

from __future__ import annotations

import hashlib
import time
from logging import WARNING

from flwr.common import log

HANG_EXTRA_SECONDS = 5.0


class InjectedFault(RuntimeError):
    """A failure injected on purpose by ``fault-rate``."""


def fault_draw(seed: int, server_round: int, partition_id: int) -> float:
    """A number in [0, 1) fixed by ``(seed, round, partition)``."""
    digest = hashlib.sha256(f"fssuavl-fault:{seed}:{server_round}:{partition_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def fault_selected(seed: int, server_round: int, partition_id: int, rate: float) -> bool:
    return rate > 0 and fault_draw(seed, server_round, partition_id) < rate


def expected_failures(seed: int, server_round: int, partition_ids, rate: float) -> list[int]:
    """The partitions whose train call fails in ``server_round``."""
    return [p for p in partition_ids if fault_selected(seed, server_round, p, rate)]


def maybe_inject_fault(config, server_round: int, partition_id: int) -> None:
    """Fail this train call if ``fault-rate`` selects it (no-op at the default rate 0)."""
    if not fault_selected(config.seed, server_round, partition_id, config.fault_rate):
        return
    if config.fault_mode == "hang":
        log(WARNING, "injected fault: partition %d hanging for %.0fs in round %d", partition_id,
            config.round_timeout + HANG_EXTRA_SECONDS, server_round)
        time.sleep(config.round_timeout + HANG_EXTRA_SECONDS)
    raise InjectedFault(f"injected fault (fault-rate={config.fault_rate:g}, mode {config.fault_mode}) "
                        f"in round {server_round} on partition {partition_id}")
