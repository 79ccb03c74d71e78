"""Where a round's time went, as one printed line beside the round line.

The server measures its own phases (configure, the wait for replies, aggregate,
central evaluation); each device reports its cold start (imports, model build,
views, data) and its training. What the server waited beyond the slowest
device's own work is Flower's: the SuperNode's and the ServerApp's 3 s polls,
the ClientApp process start before the app's clock begins, and the transfers
both ways (and, in a simulation with more clients than workers, the clients'
wait for a free worker). The server cannot split that remainder further, so
the line gives it as one figure, ``rest``, instead of guessing its parts.
"""

from __future__ import annotations

from collections.abc import Mapping

from app_config.numbers import real_number
from server_app.round_record import accepted_clients, client_value, credible_seconds

# the device's cold start, in the order it happens (client_app.worker_cache, client_app.app)
READY_PARTS = (("import-seconds", "imports"), ("model-build-seconds", "model"),
               ("augment-setup-seconds", "views"), ("data-load-seconds", "data"))


def _seconds(value: object) -> float | None:
    number = real_number(value)
    return number if number is not None and number >= 0 else None


def slowest_device(record: Mapping) -> tuple[Mapping, float, float] | None:
    """The accepted client whose ready + train seconds were the longest (and fit in the server's wait):
    (entry, ready, train); None when no client reported both."""
    timed = []
    for entry in accepted_clients(record):
        ready, train = _seconds(client_value(entry, "ready-seconds")), _seconds(client_value(entry, "train-seconds"))
        if ready is not None and train is not None and credible_seconds(record, ready + train):
            timed.append((ready + train, entry, ready, train))
    if not timed:
        return None
    _, entry, ready, train = max(timed, key=lambda item: item[0])
    return entry, ready, train


def time_split(record: Mapping) -> str:
    """``wait 26.3s = slowest device (partition 2) ready 10.2s (imports 8.5s, ...) + train 1.3s + rest 14.8s
    (...) | configure 0.1s aggregate 0.2s eval 3.0s``; '' for a round without
    the server's phase times (round 0, a skipped round)."""
    phases = record.get("phase-seconds")
    if not isinstance(phases, Mapping):
        return ""
    wait = _seconds(phases.get("wait"))
    parts = []
    slowest = slowest_device(record)
    if wait is not None and slowest is not None:
        entry, ready, train = slowest
        cold = [f"{label} {value:.1f}s" for key, label in READY_PARTS
                if (value := _seconds(client_value(entry, key))) is not None]
        who = client_value(entry, "partition-id")
        name = f"partition {who}" if who is not None else f"node {entry.get('node-id')}"
        parts.append(f"wait {wait:.1f}s = slowest device ({name}) ready {ready:.1f}s"
                     + (f" ({', '.join(cold)})" if cold else "")
                     + f" + train {train:.1f}s + rest {max(wait - ready - train, 0.0):.1f}s"
                     " (Flower's polls, process start, transfers; simulation: waiting for a worker)")
    elif wait is not None:
        parts.append(f"wait {wait:.1f}s")
    server = [f"{name} {value:.1f}s" for name in ("configure", "aggregate")
              if (value := _seconds(phases.get(name))) is not None]
    evaluation = record.get("eval")
    if isinstance(evaluation, Mapping) and (value := _seconds(evaluation.get("eval-seconds"))) is not None:
        server.append(f"eval {value:.1f}s")
    if server:
        parts.append(" ".join(server))
    return " | ".join(parts)
