"""A run's folder: resolved config, per-round metrics (JSON lines), final model.

Everything written is strict JSON (:func:`json_safe`): NaN and Inf become
``null`` (Python's ``json`` would write the non-standard ``NaN``), bytes a
``"<n bytes>"`` marker, other objects their string; lines never fail to
serialise, whatever a client sent.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from app_config.modalities import MODALITIES
from app_config.numbers import real_number
from file_io.atomic import atomic_write

MAX_DEPTH = 8


def json_safe(value, *, max_string: int | None = None, max_items: int | None = None, _depth: int = 0):
    """``value`` as plain JSON types: non-finite floats -> None, bytes -> a marker, strings and lists capped.

    ``max_string`` / ``max_items`` bound strings and containers (None: unbounded).
    """
    if hasattr(value, "tolist") and callable(value.tolist) and hasattr(value, "ndim"):
        value = value.tolist()  # numpy (or torch) arrays and scalars
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if max_string is None or len(value) <= max_string else value[:max_string] + "..."
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if _depth >= MAX_DEPTH:
        return "<nested too deep>"
    kw: dict = {"max_string": max_string, "max_items": max_items, "_depth": _depth + 1}
    if isinstance(value, dict):
        pairs = list(value.items())[:max_items] if max_items is not None else value.items()
        return {str(k) if max_string is None else str(k)[:max_string]: json_safe(v, **kw) for k, v in pairs}
    if isinstance(value, (list, tuple)):
        entries = value[:max_items] if max_items is not None else value
        return [json_safe(v, **kw) for v in entries]
    return json_safe(str(value), max_string=max_string)


def json_line(record: dict) -> str:
    """One ``metrics.jsonl`` line (strict JSON, keys sorted, newline-terminated)."""
    return json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n"


class RunOutput:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.metrics_file = folder / "metrics.jsonl"

    @classmethod
    def create(cls, run_dir: str, config, run_id: int) -> RunOutput:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = Path(run_dir).expanduser().resolve() / f"{stamp}-{config.strategy}-{run_id}"
        folder.mkdir(parents=True, exist_ok=False)
        out = cls(folder)
        out.write_json("config.json", config.as_mapping())
        return out

    def write_json(self, name: str, payload: dict) -> None:
        data = json.dumps(json_safe(payload), indent=2, sort_keys=True, allow_nan=False).encode()
        atomic_write(self.folder / name, lambda fh: fh.write(data))

    def append_round(self, record: dict) -> None:
        line = json_line(record)
        with open(self.metrics_file, "a") as fh:
            fh.write(line)

    def rewrite_rounds(self, records: list[dict]) -> None:
        """Replace ``metrics.jsonl`` with ``records`` atomically, keeping its file mode (a resumed run)."""
        data = "".join(json_line(r) for r in records).encode()
        atomic_write(self.metrics_file, lambda fh: fh.write(data))

    def save_model(self, state_dict: dict, name: str = "final_model.pt") -> Path:
        return atomic_write(self.folder / name, lambda fh: torch.save(state_dict, fh))


def format_round(record: dict) -> str:
    """One readable line per round."""
    parts = [f"round {record['round']:>3}"]
    train = record.get("train", {})
    if train:
        losses = [f"{short} {_number(train[f'loss-{m}']):.3f}" for m, short in (("image", "img"), ("audio", "aud"))
                  if f"loss-{m}" in train]  # a single-modality federation reports only its own loss
        parts.append(" ".join(["loss", *losses]) + f" | {int(_number(train.get('clients'), 0.0))} clients")
        if "learning-rate" in train:
            parts.append(f"lr {train['learning-rate']:.3g}")
    if "round-seconds" in record:
        parts.append(f"{record['round-seconds']:.1f}s")
    slowest = slowest_client(record)
    if slowest:
        parts.append(slowest)
    failures = record.get("failures")
    if isinstance(failures, int) and failures > 0:
        parts.append(failure_summary(record))
    ev = record.get("eval", {})
    for metric in ("knn", "probe"):
        cells = [f"{m} {_number(ev[f'{metric}-{m}']):.3f}" for m in MODALITIES if f"{metric}-{m}" in ev]
        if cells:
            parts.append(f"{metric} " + " ".join(cells))
    floors = [f"{metric} " + " ".join(f"{m} {_number(ev[f'floor-{metric}-{m}']):.3f}" for m in MODALITIES
                                      if f"floor-{metric}-{m}" in ev)
              for metric in ("knn", "probe") if any(f"floor-{metric}-{m}" in ev for m in MODALITIES)]
    if floors:
        parts.append("raw input " + " ".join(floors))
    if "eval-skipped" in record:
        parts.append(f"eval skipped: {record['eval-skipped']}")
    sampled = [f"{int(ev[f'eval-train-samples-{m}'])} of {int(ev[f'eval-train-total-{m}'])} {m}"
               for m in MODALITIES
               if _number(ev.get(f"eval-train-samples-{m}"), 0) < _number(ev.get(f"eval-train-total-{m}"), 0)]
    if sampled:
        parts.append("fit on " + ", ".join(sampled) + " train samples")
    return " | ".join(parts)


def slowest_client(record: dict) -> str:
    """"slowest: partition 7 (node 12) 9.8s" from the clients' own train seconds ('' with fewer than 2)."""
    from server_app.round_record import accepted_clients, client_value, credible_seconds  # (imports this module)

    timed = [(_number(client_value(c, "train-seconds")), c) for c in accepted_clients(record)]
    timed = [(t, c) for t, c in timed if t == t]  # drops NaN: clients that reported no time
    if len(timed) < 2:
        return ""
    credible: list[tuple[float, Mapping]] = []
    beyond: list[tuple[float, Mapping]] = []
    for item in timed:
        (credible if credible_seconds(record, item[0]) else beyond).append(item)
    line = ""
    if credible:
        seconds, entry = max(credible, key=lambda item: item[0])
        line = f"slowest: {_who(entry)} {seconds:.1f}s"
    if beyond:
        note = (f"{len(beyond)} client(s) reported more train seconds than the round's wait (ignored), e.g. "
                f"{_who(beyond[0][1])} {beyond[0][0]:.3g}s")
        line = f"{line} | {note}" if line else note
    return line


def _who(entry: Mapping) -> str:
    from server_app.round_record import client_value

    partition = client_value(entry, "partition-id")
    node = f"node {entry.get('node-id')}"
    return f"partition {partition} ({node})" if partition is not None else node


def failure_summary(record: dict) -> str:
    """"10 sent, 0 replies, 10 failed: <the first error's reason>" for a round with failures."""
    text = f"{record.get('sent', '?')} sent, {record.get('replies', '?')} replies, {record['failures']} failed"
    errors = [c["error"] for c in record.get("clients", []) if isinstance(c, dict) and isinstance(c.get("error"), str)]
    if errors:
        text += ": " + first_reason(errors[0])
    skipped = record.get("aggregation-skipped")
    if isinstance(skipped, str):
        text += f" (not aggregated: {skipped})"
    return text


def first_reason(error: str, limit: int = 120) -> str:
    """The exception line of a client error ("PartitionError: ...") when it has one, cut to ``limit``."""
    found = re.findall(r"([A-Za-z_][\w.]*(?:Error|Exception|Fault)\b: .*?)(?=\s+File |'>|$)", error)
    reason = (found[-1] if found else error).strip()
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


def _number(value, default: float = float("nan")) -> float:
    """A number to format (``default`` for anything else, e.g. None)."""
    number = real_number(value, finite=False)
    return default if number is None else number
