"""Exclude bad client replies before any strategy aggregates them.

``ReplyFilter`` is a mixin placed first in a strategy's bases
(``class X(ReplyFilter, FedAdam, ...)``). Every registered strategy has it, so
the rules live here only:

* ``configure_train`` remembers the names and shapes of the global model it
  sends out (metadata only, nothing is copied);
* ``aggregate_train`` checks each reply and drops it, counting why:

  ========================== ==================================================
  ``replies-failed``         the reply carries an error (the ClientApp raised,
                             the node went away, ...)
  ``replies-dropped-metrics`` not exactly one MetricRecord; ``num-examples``
                             missing, not a number, not finite or not > 0; or a
                             non-finite metric value
  ``replies-dropped-shape``  not exactly one ArrayRecord; array names differing
                             from the global model's; a shape differing; an
                             array that cannot be read as a numeric numpy array
  ``replies-dropped-nonfinite`` an array holding NaN or Inf
  ========================== ==================================================

  then hands the good replies to the wrapped strategy's ``aggregate_train``
  and adds the counts (and ``replies-received``, ``replies-aggregated``,
  ``aggregation-skipped``) to the round's MetricRecord.
* When no reply is good, ``aggregate_train`` returns ``(None, metrics)``:
  Flower's loop then keeps the previous global model, and a WARNING says so.
* The aggregate is cast back to the global model's dtypes (Flower's FedOpt
  family computes in float64; integer buffers such as ``num_batches_tracked``
  are rounded), and an aggregate holding NaN/Inf is refused the same way as an
  all-bad round (``aggregation-nonfinite`` = 1). The wrapped strategy's own
  state (e.g. FedAdam's moments) is not rolled back in that case.

Flower's ``_check_and_log_replies`` raises when replies' MetricRecords have
different keys; the filter has already checked everything aggregation needs,
so the wrapped strategy runs it without that validation (metric keys held by
only some clients are averaged over the clients holding them by
``strategies.train_metrics``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies.streaming import cast_like

FAILED = "failed"
METRICS = "metrics"
SHAPE = "shape"
NONFINITE = "nonfinite"
COUNT_KEYS = {
    FAILED: "replies-failed",
    METRICS: "replies-dropped-metrics",
    SHAPE: "replies-dropped-shape",
    NONFINITE: "replies-dropped-nonfinite",
}

Spec = dict[str, tuple[tuple[int, ...], str]]


def array_spec(arrays: ArrayRecord) -> Spec:
    """Name -> (shape, dtype) from an ArrayRecord's metadata (no deserialisation)."""
    return {name: (tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_metrics(msg: Message, weighted_by_key: str) -> str | None:
    """Why the reply's metrics cannot be used, or None."""
    records = msg.content.metric_records
    if len(records) != 1:
        return f"expected one MetricRecord, got {len(records)}"
    metrics = next(iter(records.values()))
    if weighted_by_key not in metrics:
        return f"MetricRecord lacks {weighted_by_key!r}"
    weight = metrics[weighted_by_key]
    if not _finite_number(weight) or weight <= 0:
        return f"{weighted_by_key!r} must be a finite number > 0, got {weight!r}"
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f"metric {key!r} is not finite"
    return None


def check_arrays(msg: Message, spec: Spec | None) -> tuple[str, str] | None:
    """``(category, reason)`` if the reply's arrays cannot be aggregated, else None.

    Reads one array at a time, so the check holds at most one layer in memory.
    """
    records = msg.content.array_records
    if len(records) != 1:
        return SHAPE, f"expected one ArrayRecord, got {len(records)}"
    arrays = next(iter(records.values()))
    if spec is not None and set(arrays.keys()) != set(spec):
        missing, extra = sorted(set(spec) - set(arrays.keys())), sorted(set(arrays.keys()) - set(spec))
        return SHAPE, f"array names differ from the global model (missing {missing[:3]}, extra {extra[:3]})"
    for name, array in arrays.items():
        want = None if spec is None else spec[name][0]
        if want is not None and tuple(array.shape) != want:
            return SHAPE, f"array {name!r} has shape {tuple(array.shape)}, the global model {want}"
        try:
            x = array.numpy()
        except Exception as err:  # corrupt bytes, non-numpy serialisation, pickled objects
            return SHAPE, f"array {name!r} cannot be read: {err}"
        if want is not None and x.shape != want:
            return SHAPE, f"array {name!r} decodes to shape {x.shape}, the global model {want}"
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            return SHAPE, f"array {name!r} has non-numeric dtype {x.dtype}"
        if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
            return NONFINITE, f"array {name!r} holds NaN or Inf"
    return None


def classify_reply(msg: Message, spec: Spec | None, weighted_by_key: str) -> tuple[str, str] | None:
    """``(category, reason)`` for a reply to drop, None for a good one."""
    if msg.has_error():
        return FAILED, f"error reply: {msg.error.reason}"
    reason = check_metrics(msg, weighted_by_key)
    if reason is not None:
        return METRICS, reason
    return check_arrays(msg, spec)


def filter_replies(replies: Iterable[Message], spec: Spec | None, weighted_by_key: str = "num-examples"
                   ) -> tuple[list[Message], Counter, list[str]]:
    """Split replies into good ones, counts of dropped ones per category and log lines.

    Without ``spec`` the first reply with well-formed metrics and a single
    ArrayRecord sets the expected names and shapes.
    """
    good: list[Message] = []
    counts: Counter = Counter()
    notes: list[str] = []
    for msg in replies:
        if spec is None and not msg.has_error() and len(msg.content.array_records) == 1 \
                and check_metrics(msg, weighted_by_key) is None:
            spec = array_spec(next(iter(msg.content.array_records.values())))
        verdict = classify_reply(msg, spec, weighted_by_key)
        if verdict is None:
            good.append(msg)
            continue
        category, reason = verdict
        counts[category] += 1
        notes.append(f"node {msg.metadata.src_node_id}: {reason}")
    return good, counts, notes


def _nonfinite_or_cast(arrays: ArrayRecord, spec: Spec | None) -> tuple[bool, ArrayRecord]:
    """(aggregate holds NaN/Inf?, aggregate with the global model's dtypes)."""
    out = ArrayRecord()
    for name, array in arrays.items():
        x = array.numpy()
        if np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all():
            return True, arrays
        want = None if spec is None or name not in spec else np.dtype(spec[name][1])
        out[name] = Array(np.asarray(cast_like(x, want))) if want is not None and x.dtype != want else array
    return False, out


class ReplyFilter:
    """Mixin: drop bad train replies, count them, keep the previous model if none is left."""

    _reply_spec: Spec | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._reply_spec = array_spec(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def _check_and_log_replies(self, replies: Iterable[Message], is_train: bool, validate: bool = True):
        # Replies reaching the wrapped strategy have passed ``filter_replies``.
        return super()._check_and_log_replies(replies, is_train=is_train, validate=False)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        weighted_by_key = getattr(self, "weighted_by_key", "num-examples")
        good, counts, notes = filter_replies(replies, self._reply_spec, weighted_by_key)
        for note in notes:
            log(WARNING, "aggregate_train (round %d): reply excluded: %s", server_round, note)
        summary = {"replies-received": len(replies), "replies-aggregated": len(good)}
        summary.update({key: counts.get(cat, 0) for cat, key in COUNT_KEYS.items()})
        if not good:
            log(WARNING, "aggregate_train (round %d): none of %d replies can be aggregated; "
                "the previous global model is kept", server_round, len(replies))
            if counts.get(SHAPE, 0) == len(replies):
                log(WARNING, "aggregate_train (round %d): every reply disagrees with the global model's array "
                    "names/shapes (e.g. %s); was the global model (a resumed checkpoint?) built for another "
                    "architecture?", server_round, notes[0])
            return None, MetricRecord({**summary, "aggregation-skipped": 1, "aggregation-nonfinite": 0})

        arrays, metrics = super().aggregate_train(server_round, good)
        metrics = MetricRecord() if metrics is None else metrics
        for key, value in summary.items():
            metrics[key] = value
        metrics["aggregation-skipped"] = 0
        metrics["aggregation-nonfinite"] = 0
        if arrays is None:
            metrics["aggregation-skipped"] = 1
            return None, metrics
        nonfinite, arrays = _nonfinite_or_cast(arrays, self._reply_spec)
        if nonfinite:
            log(WARNING, "aggregate_train (round %d): the aggregate holds NaN/Inf; "
                "the previous global model is kept", server_round)
            metrics["aggregation-skipped"] = 1
            metrics["aggregation-nonfinite"] = 1
            return None, metrics
        if sum(counts.values()):
            log(INFO, "aggregate_train (round %d): aggregated %d of %d replies (%s)", server_round,
                len(good), len(replies), ", ".join(f"{COUNT_KEYS[c]}={n}" for c, n in sorted(counts.items())))
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        weighted_by_key = getattr(self, "weighted_by_key", "num-examples")
        good = [m for m in replies if not m.has_error() and check_metrics(m, weighted_by_key) is None]
        if len(good) < len(replies):
            log(WARNING, "aggregate_evaluate (round %d): %d of %d replies excluded (error or bad metrics)",
                server_round, len(replies) - len(good), len(replies))
        if not good:
            return None
        return super().aggregate_evaluate(server_round, good)
