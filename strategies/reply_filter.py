"""Exclude bad client replies before any strategy aggregates them.

``ReplyFilter`` is placed first in a strategy's bases: the aggregation-rule
shell (:class:`strategies.rule_strategy.RuleStrategy`) and the DP adapter
(:class:`strategies.dp.DPAdapter`). Every registered strategy has it, so the
rules live here only:

* ``configure_train`` remembers the names, shapes and dtypes of the global
  model it sends out (metadata only, nothing is copied);
* ``aggregate_train`` checks each reply with
  :func:`strategies.reply_check.classify_reply` (the rules and the drop
  categories are listed there) and drops the bad ones, counting them per
  category in the round's MetricRecord (``replies-failed``,
  ``replies-dropped-metrics``, ``replies-dropped-client-info``,
  ``replies-dropped-shape``, ``replies-dropped-dtype``,
  ``replies-dropped-size``, ``replies-dropped-nonfinite``) beside
  ``replies-received``, ``replies-aggregated``, ``replies-weight-capped``,
  ``aggregation-skipped`` and ``aggregation-nonfinite``;
* each good reply's update is scaled down to at most ``update_norm_cap_factor``
  x the round's lower-median update norm (:mod:`strategies.update_bound`;
  ``replies-norm-bounded`` counts them), on the copies described next;
* the good replies' weights are capped (:mod:`strategies.weight_cap`,
  ``weight_cap_factor``; the differential-privacy modes use equal weights
  instead, ``uniform_weights``), and the aggregation (``aggregate_screened``:
  the aggregation rule, or Flower's DP wrapper) receives *copies*
  of the good replies holding only their ArrayRecord and their MetricRecord
  with the capped weight: the clients' messages are never modified (the round
  record shows what each client sent), and strategies that consume their input
  (Flower's FedMedian pops the arrays) cannot affect them;
* when no reply is good, ``aggregate_train`` returns ``(None, metrics)``:
  the round loop then keeps the previous global model, and a WARNING says so;
* the aggregate is cast to the global model's dtypes (the server optimisers
  compute in float64; integer buffers such as ``num_batches_tracked`` are
  rounded and clipped to their range), and an aggregate holding NaN/Inf
  *after* that cast (e.g. a float64 sum beyond float32's range) is refused the
  same way (``aggregation-nonfinite`` = 1). A rule's own state (FedAdam's
  moments) is kept as the rule left it in that case. Should the
  aggregation raise on replies that passed every check, the round is
  skipped too (``aggregation-failed`` = 1, logged with its traceback): one
  round's aggregation never ends the run.

``last_dropped`` maps the node id of each reply dropped in the latest round to
its category (for the round record). A strategy wrapped by another filtering
strategy (the differential-privacy wrappers) sets ``trusted_replies`` and skips
the checks its wrapper already made.

Flower's strategies refuse replies whose MetricRecords have different keys
(a visual-only client reports no audio loss), so the copies that are
aggregated hold only the weight (and the metrics the rule or a DP mode requires);
the round's train metrics are aggregated here from the clients' full records
with the same capped weights (:mod:`strategies.train_metrics`: a key held by
only some clients is averaged over those clients), and evaluation metrics
likewise, with the strategy's public ``evaluate_metrics_aggr_fn``.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from logging import ERROR, INFO, WARNING
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.reply_check import (
    CATEGORIES,
    FAILED,
    SHAPE,
    Spec,
    array_spec,
    check_metrics,
    classify_reply,
)
from strategies.streaming import cast_like, reply_weight
from strategies.train_metrics import aggregate_train_metrics
from strategies.update_bound import bound_updates
from strategies.weight_cap import DEFAULT_FACTOR, DEFAULT_NORM_FACTOR, cap_weights

COUNT_KEYS = {category: ("replies-failed" if category == FAILED else f"replies-dropped-{category}")
              for category in CATEGORIES}
MAX_LOGGED = 5  # excluded replies logged one by one per round; the rest are counted

__all__ = ["COUNT_KEYS", "ReplyFilter", "array_spec", "cast_to_spec", "filter_replies", "for_aggregation",
           "screen_replies"]


Drop = tuple[int, str, str]  # (node id, category, log line)


def screen_replies(replies: Iterable[Message], spec: Spec | None, weighted_by_key: str = "num-examples",
                   required_metrics: tuple[str, ...] = ()) -> tuple[list[Message], Counter, list[Drop]]:
    """Split replies into good ones, counts of dropped ones per category and one entry per drop.

    Without ``spec`` the first reply with well-formed metrics and a single
    ArrayRecord sets the expected names, shapes and dtypes (only for callers
    that never sent a model, e.g. benchmarks).
    """
    good: list[Message] = []
    counts: Counter = Counter()
    drops: list[Drop] = []
    for msg in replies:
        if spec is None and not msg.has_error() and len(msg.content.array_records) == 1 \
                and check_metrics(msg, weighted_by_key) is None:
            spec = array_spec(next(iter(msg.content.array_records.values())))
        verdict = classify_reply(msg, spec, weighted_by_key, required_metrics)
        if verdict is None:
            good.append(msg)
            continue
        category, reason = verdict
        counts[category] += 1
        drops.append((msg.metadata.src_node_id, category, f"node {msg.metadata.src_node_id}: {reason}"))
    return good, counts, drops


def filter_replies(replies: Iterable[Message], spec: Spec | None, weighted_by_key: str = "num-examples",
                   required_metrics: tuple[str, ...] = ()) -> tuple[list[Message], Counter, list[str]]:
    """:func:`screen_replies` with plain log lines for the dropped replies."""
    good, counts, drops = screen_replies(replies, spec, weighted_by_key, required_metrics)
    return good, counts, [line for _, _, line in drops]


def for_aggregation(msg: Message, weighted_by_key: str, weight: float, kept: tuple[str, ...] = ()) -> Message:
    """A copy of a checked reply holding its ArrayRecord (same Arrays) and a MetricRecord of ``weight``
    and the ``kept`` metrics: every copy has the same metric keys, as Flower's strategies require."""
    (array_key, arrays), = msg.content.array_records.items()
    (metric_key, metrics), = msg.content.metric_records.items()
    values = {key: metrics[key] for key in kept if key in metrics}
    values[weighted_by_key] = float(weight)
    content = RecordDict({array_key: ArrayRecord(dict(arrays.items())), metric_key: MetricRecord(values)})
    duplicate = copy.copy(msg)  # the same metadata (sender, ids), read-only for the strategies
    duplicate.content = content
    return duplicate


def weighted_metrics(msg: Message, weighted_by_key: str, weight: float) -> RecordDict:
    """The reply's full metrics with the weight it is aggregated with (for the round's train metrics)."""
    (metric_key, metrics), = msg.content.metric_records.items()
    return RecordDict({metric_key: MetricRecord({**dict(metrics.items()), weighted_by_key: float(weight)})})


def cast_to_spec(arrays: ArrayRecord, spec: Spec | None) -> tuple[bool, ArrayRecord]:
    """(holds NaN/Inf after the cast?, the aggregate in the global model's dtypes)."""
    out = ArrayRecord()
    for name, array in arrays.items():
        x = array.numpy()
        want = None if spec is None or name not in spec else np.dtype(spec[name][1])
        if want is not None and x.dtype != want:
            x = np.asarray(cast_like(x, want))
            array = Array(x)
        if x.dtype.kind in "fc" and not np.isfinite(x).all():
            return True, arrays
        out[name] = array
    return False, out


if TYPE_CHECKING:  # a mixin placed before a Flower strategy: its super() is that strategy
    class _Strategy(Strategy):
        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid) -> Iterable[Message]:
            raise NotImplementedError

        def aggregate_train(self, server_round: int, replies: Iterable[Message]
                            ) -> tuple[ArrayRecord | None, MetricRecord | None]:
            raise NotImplementedError

        def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
            raise NotImplementedError
else:
    _Strategy = object


class ReplyFilter(_Strategy):
    """Mixin: drop bad train replies, count them, cap weights, keep the previous model if none is left."""

    _reply_spec: Spec | None = None
    _reference: ArrayRecord | None = None
    weight_cap_factor: float = DEFAULT_FACTOR
    update_norm_cap_factor: float = DEFAULT_NORM_FACTOR
    uniform_weights: bool = False
    trusted_replies: bool = False
    required_metrics: tuple[str, ...] = ()
    min_usable_replies: int = 1  # fewer replies left after the checks: the previous model is kept
    last_dropped: dict[int, str] = {}

    def expect_model(self, arrays: ArrayRecord) -> None:
        """Check the next replies against ``arrays``: their names, shapes and dtypes, and updates measured
        from it (not copied). ``configure_train`` calls it with the model it sends."""
        self._reply_spec = array_spec(arrays)
        self._reference = arrays

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.expect_model(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def _weights(self, good: list[Message], weighted_by_key: str) -> tuple[list[float], int]:
        if self.uniform_weights:
            return [1.0] * len(good), 0
        return cap_weights([reply_weight(m.content, weighted_by_key) for m in good], self.weight_cap_factor)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        weighted_by_key = getattr(self, "weighted_by_key", "num-examples")
        if self.trusted_replies:
            good, counts, notes = [m for m in replies if not m.has_error()], Counter[str](), list[Drop]()
            counts[FAILED] = len(replies) - len(good)
        else:
            good, counts, notes = screen_replies(replies, self._reply_spec, weighted_by_key, self.required_metrics)
        self.last_dropped = {node: category for node, category, _ in notes}
        for _, _, note in notes[:MAX_LOGGED]:
            log(WARNING, "aggregate_train (round %d): reply excluded: %s", server_round, note)
        if len(notes) > MAX_LOGGED:
            log(WARNING, "aggregate_train (round %d): %d more replies excluded", server_round, len(notes) - MAX_LOGGED)
        weights, capped = self._weights(good, weighted_by_key) if good else ([], 0)
        summary = {"replies-received": len(replies), "replies-aggregated": len(good), "replies-weight-capped": capped,
                   "replies-norm-bounded": 0}
        summary.update({key: counts.get(cat, 0) for cat, key in COUNT_KEYS.items()})
        if good and len(good) < self.min_usable_replies:
            log(WARNING, "aggregate_train (round %d): %d usable of %d replies, fewer than the minimum %d; the "
                "previous global model is kept", server_round, len(good), len(replies), self.min_usable_replies)
            return None, MetricRecord({**summary, "aggregation-skipped": 1, "aggregation-nonfinite": 0})
        if not good:
            log(WARNING, "aggregate_train (round %d): none of %d replies can be aggregated; "
                "the previous global model is kept", server_round, len(replies))
            if replies and counts.get(SHAPE, 0) == len(replies):
                log(WARNING, "aggregate_train (round %d): every reply disagrees with the global model's array "
                    "names/shapes (e.g. %s); was the global model (a resumed checkpoint?) built for another "
                    "architecture?", server_round, notes[0][2])
            return None, MetricRecord({**summary, "aggregation-skipped": 1, "aggregation-nonfinite": 0})

        copies = [for_aggregation(m, weighted_by_key, w, self.required_metrics) for m, w in zip(good, weights)]
        train_metrics = aggregate_train_metrics([weighted_metrics(m, weighted_by_key, w)
                                                 for m, w in zip(good, weights)], weighted_by_key)
        if not self.trusted_replies and self._reference is not None:  # a trusted strategy's wrapper bounded them
            summary["replies-norm-bounded"] = bound_updates(copies, self._reference, self.update_norm_cap_factor)
        try:
            arrays, metrics = self.aggregate_screened(server_round, copies)
        except FloatingPointError as err:  # the streaming sum refused a non-finite aggregate
            log(WARNING, "aggregate_train (round %d): %s; the previous global model is kept", server_round, err)
            return None, MetricRecord({**summary, "aggregation-skipped": 1, "aggregation-nonfinite": 1})
        except Exception as err:  # noqa: BLE001 - one round's aggregation must not end the run
            log(ERROR, "aggregate_train (round %d): aggregation failed (%s: %s); the previous global model is "
                "kept", server_round, type(err).__name__, err, exc_info=True)
            return None, MetricRecord({**summary, "aggregation-skipped": 1, "aggregation-nonfinite": 0,
                                       "aggregation-failed": 1})
        metrics = MetricRecord() if metrics is None else metrics
        for key, value in [*train_metrics.items(), *summary.items()]:
            metrics[key] = value
        metrics["aggregation-skipped"] = 0
        metrics["aggregation-nonfinite"] = 0
        if arrays is None:
            metrics["aggregation-skipped"] = 1
            return None, metrics
        nonfinite, arrays = cast_to_spec(arrays, self._reply_spec)
        if nonfinite:
            log(WARNING, "aggregate_train (round %d): the aggregate holds NaN/Inf; "
                "the previous global model is kept", server_round)
            metrics["aggregation-skipped"] = 1
            metrics["aggregation-nonfinite"] = 1
            return None, metrics
        if sum(counts.values()) or capped or summary["replies-norm-bounded"]:
            log(INFO, "aggregate_train (round %d): aggregated %d of %d replies (%s)", server_round,
                len(good), len(replies), ", ".join(f"{COUNT_KEYS[c]}={n}" for c, n in sorted(counts.items()) if n)
                + (f", replies-weight-capped={capped}" if capped else "")
                + (f", replies-norm-bounded={summary['replies-norm-bounded']}" if summary["replies-norm-bounded"]
                   else ""))
        return arrays, metrics

    def aggregate_screened(self, server_round: int, copies: list[Message]
                           ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the screened copies (one ArrayRecord and one MetricRecord of the capped weight each):
        the next class in the bases does (an aggregation rule, or Flower's DP wrapper)."""
        return super().aggregate_train(server_round, copies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        weighted_by_key = getattr(self, "weighted_by_key", "num-examples")
        good = []
        for msg in replies:
            try:
                if not msg.has_error() and check_metrics(msg, weighted_by_key) is None:
                    good.append(msg)
            except Exception:  # noqa: BLE001 - an unreadable evaluation reply is just excluded
                pass
        if len(good) < len(replies):
            log(WARNING, "aggregate_evaluate (round %d): %d of %d replies excluded (error or bad metrics)",
                server_round, len(replies) - len(good), len(replies))
        if not good:
            return None
        aggregate = getattr(self, "evaluate_metrics_aggr_fn", None)
        if aggregate is None:  # a DP wrapper: its inner strategy (itself filtered) aggregates
            return super().aggregate_evaluate(server_round, good)
        return aggregate([m.content for m in good], weighted_by_key)
