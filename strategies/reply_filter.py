"""Exclude bad client replies before any strategy aggregates them.

``ReplyFilter`` is placed first in a strategy's bases: the aggregation-rule
shell (:class:`strategies.rule_strategy.RuleStrategy`) and the DP adapter
(:class:`strategies.dp.DPAdapter`). Every registered strategy has it, so the
rules live here only. Its steps are public methods that the server's round
(:func:`server_app.round_loop.play_round`) calls one after the other --
``screen``, ``cap_weights``, ``too_few``, ``bound_updates``, ``apply_rule``,
``cast_to_model`` -- and ``aggregate_train`` runs the same steps for callers
that use Flower's interface (Flower's DP wrappers, ``Strategy.start``):

* ``configure_train`` remembers the names, shapes and dtypes of the global
  model it sends out (metadata only, nothing is copied);
* ``screen`` checks each reply with
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
* when no reply is good (``too_few``), the round's aggregate is ``None``:
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
from dataclasses import dataclass, field
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
from strategies.update_bound import bound_updates as bound_update_norms
from strategies.weight_cap import DEFAULT_FACTOR, DEFAULT_NORM_FACTOR
from strategies.weight_cap import cap_weights as capped_weights

COUNT_KEYS = {category: ("replies-failed" if category == FAILED else f"replies-dropped-{category}")
              for category in CATEGORIES}
MAX_LOGGED = 5  # excluded replies logged one by one per round; the rest are counted

__all__ = ["COUNT_KEYS", "ReplyFilter", "ScreenedReplies", "array_spec", "cast_to_spec", "filter_replies",
           "for_aggregation", "screen_replies"]


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


@dataclass
class ScreenedReplies:
    """A round's train replies after the checks, and what the later steps of the round add to them."""

    received: int  # replies the round got, errors included
    good: list[Message]  # those that passed every check
    counts: Counter  # dropped replies per category
    drops: list[Drop]  # one entry per dropped reply
    weights: list[float] = field(default_factory=list)  # each good reply's weight, capped
    capped: int = 0  # replies whose weight was capped
    norm_bounded: int = 0  # replies whose update was scaled down
    copies: list[Message] = field(default_factory=list)  # what the rule aggregates

    def summary(self) -> dict[str, int]:
        """The round's reply counts, as metrics."""
        return {"replies-received": self.received, "replies-aggregated": len(self.good),
                "replies-weight-capped": self.capped, "replies-norm-bounded": self.norm_bounded,
                **{key: self.counts.get(category, 0) for category, key in COUNT_KEYS.items()}}


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

    @property
    def weighted_key(self) -> str:
        """The metric that weighs a reply (FedAvg's ``weighted_by_key``; ``num-examples``)."""
        return getattr(self, "weighted_by_key", "num-examples")

    def expect_model(self, arrays: ArrayRecord) -> None:
        """Check the next replies against ``arrays``: their names, shapes and dtypes, and updates measured
        from it (not copied). ``configure_train`` calls it with the model it sends."""
        self._reply_spec = array_spec(arrays)
        self._reference = arrays

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.expect_model(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def screen(self, server_round: int, replies: list[Message]) -> ScreenedReplies:
        """Drop and count the replies that fail a check (:func:`screen_replies`); log the first few."""
        if self.trusted_replies:
            good, counts, drops = [m for m in replies if not m.has_error()], Counter[str](), list[Drop]()
            counts[FAILED] = len(replies) - len(good)
        else:
            good, counts, drops = screen_replies(replies, self._reply_spec, self.weighted_key, self.required_metrics)
        return self.note_drops(server_round, replies, good, counts, drops)

    def note_drops(self, server_round: int, replies: list[Message], good: list[Message], counts: Counter[str],
                   drops: list[Drop], who: str = "aggregate_train") -> ScreenedReplies:
        """Keep which node's reply was dropped and why (the round's client entries), log the first few."""
        self.last_dropped = {node: category for node, category, _ in drops}
        for _, _, note in drops[:MAX_LOGGED]:
            log(WARNING, "%s (round %d): reply excluded: %s", who, server_round, note)
        if len(drops) > MAX_LOGGED:
            log(WARNING, "%s (round %d): %d more replies excluded", who, server_round, len(drops) - MAX_LOGGED)
        return ScreenedReplies(len(replies), good, counts, drops)

    def cap_weights(self, screened: ScreenedReplies) -> None:
        """Each good reply's weight: its data size capped (:mod:`strategies.weight_cap`), or 1 under DP."""
        if not screened.good:
            return
        if self.uniform_weights:
            screened.weights = [1.0] * len(screened.good)
            return
        screened.weights, screened.capped = capped_weights(
            [reply_weight(m.content, self.weighted_key) for m in screened.good], self.weight_cap_factor)

    def too_few(self, server_round: int, screened: ScreenedReplies) -> MetricRecord | None:
        """The round's metrics when too few replies are left to aggregate (the previous model is kept)."""
        good, received = len(screened.good), screened.received
        if good and good < self.min_usable_replies:
            log(WARNING, "aggregate_train (round %d): %d usable of %d replies, fewer than the minimum %d; the "
                "previous global model is kept", server_round, good, received, self.min_usable_replies)
        elif not good:
            log(WARNING, "aggregate_train (round %d): none of %d replies can be aggregated; "
                "the previous global model is kept", server_round, received)
            if received and screened.counts.get(SHAPE, 0) == received:
                log(WARNING, "aggregate_train (round %d): every reply disagrees with the global model's array "
                    "names/shapes (e.g. %s); was the global model (a resumed checkpoint?) built for another "
                    "architecture?", server_round, screened.drops[0][2])
        else:
            return None
        return MetricRecord({**screened.summary(), "aggregation-skipped": 1, "aggregation-nonfinite": 0})

    def bound_updates(self, screened: ScreenedReplies) -> None:
        """The copies the rule aggregates (arrays + capped weight), each update scaled down to at most
        ``update_norm_cap_factor`` x the round's lower-median norm (:mod:`strategies.update_bound`)."""
        screened.copies = [for_aggregation(m, self.weighted_key, w, self.required_metrics)
                           for m, w in zip(screened.good, screened.weights)]
        if not self.trusted_replies and self._reference is not None:  # a trusted strategy's wrapper bounded them
            screened.norm_bounded = bound_update_norms(screened.copies, self._reference, self.update_norm_cap_factor)

    def apply_rule(self, server_round: int, screened: ScreenedReplies) -> tuple[ArrayRecord | None, MetricRecord]:
        """The aggregation rule on the bounded copies, with the round's train metrics and counts; a rule that
        raises skips the round (one round's aggregation never ends the run)."""
        summary = screened.summary()
        try:
            arrays, metrics = self.aggregate_screened(server_round, screened.copies)
        except FloatingPointError as err:  # the streaming sum refused a non-finite aggregate
            log(WARNING, "aggregate_train (round %d): %s; the previous global model is kept", server_round, err)
            return None, MetricRecord({**summary, "aggregation-skipped": 1, "aggregation-nonfinite": 1})
        except Exception as err:  # noqa: BLE001 - one round's aggregation must not end the run
            log(ERROR, "aggregate_train (round %d): aggregation failed (%s: %s); the previous global model is "
                "kept", server_round, type(err).__name__, err, exc_info=True)
            return None, MetricRecord({**summary, "aggregation-skipped": 1, "aggregation-nonfinite": 0,
                                       "aggregation-failed": 1})
        train_metrics = aggregate_train_metrics([weighted_metrics(m, self.weighted_key, w)
                                                 for m, w in zip(screened.good, screened.weights)], self.weighted_key)
        metrics = MetricRecord() if metrics is None else metrics
        for key, value in [*train_metrics.items(), *summary.items()]:
            metrics[key] = value
        metrics["aggregation-skipped"] = int(arrays is None)
        metrics["aggregation-nonfinite"] = 0
        return arrays, metrics

    def cast_to_model(self, server_round: int, screened: ScreenedReplies, arrays: ArrayRecord | None,
                      metrics: MetricRecord) -> tuple[ArrayRecord | None, MetricRecord]:
        """The aggregate in the global model's dtypes, or None (and ``aggregation-nonfinite``) when the cast
        leaves NaN/Inf; logs what the round excluded, capped or bounded."""
        if arrays is None:
            return None, metrics
        nonfinite, arrays = cast_to_spec(arrays, self._reply_spec)
        if nonfinite:
            log(WARNING, "aggregate_train (round %d): the aggregate holds NaN/Inf; "
                "the previous global model is kept", server_round)
            metrics["aggregation-skipped"] = 1
            metrics["aggregation-nonfinite"] = 1
            return None, metrics
        counts, capped, bounded = screened.counts, screened.capped, screened.norm_bounded
        if sum(counts.values()) or capped or bounded:
            log(INFO, "aggregate_train (round %d): aggregated %d of %d replies (%s)", server_round,
                len(screened.good), screened.received,
                ", ".join(f"{COUNT_KEYS[c]}={n}" for c, n in sorted(counts.items()) if n)
                + (f", replies-weight-capped={capped}" if capped else "")
                + (f", replies-norm-bounded={bounded}" if bounded else ""))
        return arrays, metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The steps of :func:`server_app.round_loop.play_round` from screening to the cast, for callers that
        drive the strategy through Flower's interface (Flower's DP wrappers, ``Strategy.start``)."""
        screened = self.screen(server_round, list(replies))
        self.cap_weights(screened)
        refused = self.too_few(server_round, screened)
        if refused is not None:
            return None, refused
        self.bound_updates(screened)
        arrays, metrics = self.apply_rule(server_round, screened)
        return self.cast_to_model(server_round, screened, arrays, metrics)

    def aggregate_screened(self, server_round: int, copies: list[Message]
                           ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the screened copies (one ArrayRecord and one MetricRecord of the capped weight each):
        the next class in the bases does (an aggregation rule, or Flower's DP wrapper)."""
        return super().aggregate_train(server_round, copies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        weighted_by_key = self.weighted_key
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
