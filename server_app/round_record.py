"""A round's per-client entries for ``metrics.jsonl``: what each client sent, in its own namespace.

Every client entry is built by the server::

    {"node-id": 7, "metrics": {...the client's MetricRecord...},
     "client-info": {...its client-info ConfigRecord...}, "dropped": "dtype"}
    {"node-id": 8, "error": "ClientApp raised ..."}

``node-id``, ``error`` and ``dropped`` (the reply filter's category for a reply
it did not aggregate) are the server's; the client's own values live under
``metrics`` and ``client-info`` only, so a client metric named ``node-id``
cannot replace the real node id. The values are made JSON-safe and bounded
(:func:`server_app.run_output.json_safe`; at most ``MAX_VALUES`` values per
record, strings cut at ``MAX_STRING`` characters), so a reply the filter
dropped cannot bloat ``metrics.jsonl`` or the checkpoints that carry its
history. :func:`client_value` reads a value from an entry of either this
layout or the earlier flat one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from flwr.app import Message

from app_config.numbers import real_number
from server_app.round_loop import NO_REPLY
from server_app.run_output import json_safe

MAX_VALUES = 64
MAX_STRING = 256
NAMESPACES = ("metrics", "client-info")
ERROR_HEAD = 64  # characters kept from the start of a long error; the rest of MAX_STRING comes from its end
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_text(reason: str) -> str:
    """A client error bounded to ``MAX_STRING`` characters that keeps its last line.

    Ray wraps a ClientApp's exception in a long traceback; the exception's own
    message comes last, so a plain head cut would record only the wrapper.
    """
    text = " ".join(_ANSI.sub("", reason).split())
    if len(text) <= MAX_STRING:
        return text
    return text[:ERROR_HEAD] + " ... " + text[-(MAX_STRING - ERROR_HEAD - 5):]


def _record(record) -> dict:
    out = {}
    for i, (key, value) in enumerate(record.items()):
        if i == MAX_VALUES:
            out["..."] = f"{len(record) - MAX_VALUES} more values not recorded"
            break
        out[str(key)[:MAX_STRING]] = json_safe(value, max_string=MAX_STRING, max_items=MAX_VALUES)
    return out


def client_entry(reply: Message, dropped: str | None = None) -> dict:
    """One client's own numbers for the round (or its error), before aggregation."""
    entry: dict = {"node-id": int(reply.metadata.src_node_id)}
    if reply.has_error():
        entry["error"] = error_text(str(reply.error.reason))
        return entry
    content = reply.content
    metrics = list(content.metric_records.values())
    if metrics:
        entry["metrics"] = _record(metrics[0])
    if "client-info" in content.config_records:
        entry["client-info"] = _record(content.config_records["client-info"])
    if dropped is not None:
        entry["dropped"] = dropped
    return entry


def client_entries(replies: Iterable[Message], missing_nodes: Iterable[int] = (), no_reply: str = NO_REPLY,
                   dropped: Mapping[int, str] | None = None) -> list[dict]:
    """Entries for the round's replies, then for the nodes that sent none.

    ``dropped`` maps node ids to the reply filter's drop category (a strategy's ``last_dropped``).
    """
    dropped = dropped or {}
    entries = [client_entry(r, dropped.get(r.metadata.src_node_id)) for r in replies]
    entries += [{"node-id": int(node), "error": no_reply} for node in missing_nodes]
    return entries


def accepted_clients(record: Mapping) -> list[Mapping]:
    """The round's client entries whose reply was aggregated: what a client reports counts only then
    (a dropped or failed reply's ``train-seconds`` or memory could be anything it chose)."""
    return [c for c in record.get("clients") or [] if isinstance(c, Mapping) and "error" not in c
            and "dropped" not in c]


SECONDS_SLACK = 1.0  # the server's wait includes the client's time; 1 s for clocks and rounding


def credible_seconds(record: Mapping, seconds: float) -> bool:
    """Whether a client's own time fits inside the round's wait that the server measured (a record without
    phase times cannot tell: True). An accepted reply can still say ``train-seconds`` = 1e15."""
    phases = record.get("phase-seconds")
    wait = real_number(phases.get("wait")) if isinstance(phases, Mapping) else None
    return wait is None or seconds <= wait + SECONDS_SLACK


def client_value(entry: Mapping, key: str, default=None):
    """``key`` from a client entry's namespaces (or, for records written before them, the entry itself)."""
    for namespace in NAMESPACES:
        values = entry.get(namespace)
        if isinstance(values, Mapping) and key in values:
            return values[key]
    if key in entry and key not in ("node-id", "error", "dropped", *NAMESPACES):
        return entry[key]
    return default
