"""Per-round scalars as TensorBoard event files, beside ``metrics.jsonl``.

Fed the same record as ``RunOutput.append_round`` and written to
``<run folder>/tensorboard/``; view all runs with ``tensorboard --logdir runs``.
Tags (step = server round):

- ``train/<key>``: aggregated client train metrics (``train/loss-image``,
  ``train/loss-audio``, ``train/loss``, client counts, example counts, the
  reply filter's ``replies-*`` / ``aggregation-*`` counters, ...);
- ``ldawa/<key>``: L-DAWA diagnostics with the ``ldawa-`` prefix dropped
  (``ldawa/delta-mean``, ``ldawa/delta-min``, ``ldawa/divergence``,
  ``ldawa/divergence-max-client``, ``ldawa/delta/<layer group>``);
- ``eval/<key>``: central evaluation (``eval/knn-image``, ``eval/probe-audio``, ...);
- ``round/replies``, ``round/failures``, ``round/sent``, ``round/no-reply``,
  ``round/aggregation-skipped`` (when the record has them), ``round/seconds``,
  and where clients report their placement ``round/hosts`` and
  ``round/ray-nodes`` (distinct hosts and Ray nodes that ran the round's clients;
  only string values count, whatever else a client sent is ignored).

A resumed run opens the log with ``purge_step`` = the first round after the
checkpoint: TensorBoard's own purge (a ``SessionLog.START`` event at that step)
then hides every event of that round and later from the interrupted run, so
each round appears once, with the resumed run's values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from app_config.numbers import real_number
from server_app.round_record import accepted_clients, client_value, credible_seconds

SUBFOLDER = "tensorboard"


def _number(value) -> float | None:
    return real_number(value, finite=False, allow_bool=True)


CLIENT_RESOURCES = ("peak-rss-mb", "train-seconds", "ready-seconds", "threads", "bytes-sent")


def round_scalars(record: dict) -> dict[str, float]:
    """A ``metrics.jsonl`` record -> ``{tag: value}`` (non-numeric entries are skipped)."""
    out: dict[str, float] = {}
    for key, value in (record.get("train") or {}).items():
        number = _number(value)
        if number is None:
            continue
        if key.startswith("ldawa-"):
            out["ldawa/" + key[len("ldawa-"):]] = number
        else:
            out["train/" + key] = number
    for key, value in (record.get("eval") or {}).items():
        number = _number(value)
        if number is not None:
            out["eval/" + key] = number
    for key in ("replies", "failures", "sent", "no-reply", "aggregation-skipped", "bytes-sent", "bytes-received"):
        number = _number(record.get(key))
        if number is not None:
            out["round/" + key] = number
    number = _number(record.get("round-seconds"))
    if number is not None:
        out["round/seconds"] = number
    clients = accepted_clients(record)
    for field in CLIENT_RESOURCES:  # the device report: the worst aggregated client of the round
        values = [v for c in clients if (v := _number(client_value(c, field))) is not None
                  and (not field.endswith("-seconds") or credible_seconds(record, v))]
        if values:
            out[f"clients/{field}-max"] = max(values)
    for field, tag in (("host", "round/hosts"), ("ray-node-id", "round/ray-nodes")):
        seen = {value for c in clients if isinstance(c, dict)
                and isinstance(value := client_value(c, field), str)}
        if seen:
            out[tag] = float(len(seen))
    return out


class TensorBoardLog:
    """Writes each round's record as scalars; a disabled log (``writer is None``) does nothing.

    ``purge_step``: on resume, the first round to run again; events of that
    round and later already in the folder are purged (the config text, step 0,
    is not written twice).
    """

    def __init__(self, run_folder: Path | str, enabled: bool = True, purge_step: int | None = None) -> None:
        self.folder = Path(run_folder) / SUBFOLDER
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # tensorboard is a dependency; an old environment may lack it
            print(f"[fssuavl] warning: TensorBoard logging off ({err}); "
                  "pip install tensorboard to enable it", file=sys.stderr, flush=True)
            return
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge_step)
        config_file = Path(run_folder) / "config.json"
        if purge_step is None and config_file.exists():
            self.write_config(json.loads(config_file.read_text()))

    def write_config(self, config: dict) -> None:
        """The run config as a text summary (TensorBoard's TEXT tab)."""
        if self.writer is None:
            return
        rows = "\n".join(f"| {k} | {json.dumps(v)} |" for k, v in sorted(config.items()))
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows, global_step=0)
        self.writer.flush()

    def write_round(self, record: dict) -> None:
        if self.writer is None:
            return
        step = int(record["round"])
        for tag, value in round_scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # long runs: visible in TensorBoard as soon as the round ends

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
