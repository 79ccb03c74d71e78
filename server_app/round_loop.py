"""The server's round, in one function (:func:`play_round`), and the resumable loop that runs it.

:func:`play_round` is the server's half of a round, read top to bottom: sample
(seeded), encode for the wire, send and collect, decode, screen the replies,
cap their weights, bound their updates, call the aggregation rule, cast,
record, checkpoint. Each step is a call into the module that owns it.

Why not ``strategy.start``: it always counts rounds from 1 and evaluates the
initial model as round 0, so a run resumed from a checkpoint of round ``k``
would restart the round numbers, and strategies whose maths depends on the
round (FedAdam's bias correction uses ``server_round``; L-DAWA's warm-up is
"round <= warmup") would compute something else than the uninterrupted run.
:func:`run_rounds` is the same loop -- it calls the strategy's own
``configure_train``, the reply filter's steps that make up ``aggregate_train``
(:class:`strategies.reply_filter.ReplyFilter`), ``configure_evaluate`` /
``aggregate_evaluate`` and ``grid.send_and_receive(..., timeout=...)`` in the
same order -- with a ``start_round`` parameter, plus what reliable, repeatable
runs need:

* **Failures per round.** Replies carrying an error (the ClientApp raised, the
  SuperNode went away) and messages without any reply when ``timeout`` ran out
  (a client hung or disconnected) are counted; the round aggregates the replies
  it got when at least ``min_replies`` of them succeeded, else it keeps the
  previous global model (``aggregation-skipped``). Bad replies among the
  successful ones (NaN/Inf, wrong shapes, bad metrics) are then dropped by the
  strategies' reply filter (``strategies.reply_filter``).
* **Order-independent aggregation.** Replies arrive in whatever order clients
  finish; they are sorted by the partition id the client reports (then node
  id) before aggregation, so floating-point sums do not depend on timing. A
  partition id that is not an int in ``[0, 2**31)`` (NaN, Inf, a list, ...)
  is ignored for the ordering (that reply sorts last, by node id); the reply
  filter then drops the reply.
* **Repeatable sampling.** ``seed`` seeds the strategy's own node sampling
  (:mod:`strategies.seeded_sampling`: a ``random.Random`` per round, from
  ``(seed, round)``), so a resumed round samples as the uninterrupted one did
  (same connected nodes); the global ``random`` module is not touched.
* **Hooks.** ``record_train(RoundTrain)`` sees each round's replies and counts
  before central evaluation; ``evaluate_and_record(round, arrays)`` evaluates
  and writes the round's record; ``write_checkpoint(round, arrays)`` runs last
  (the ServerApp's :class:`~server_app.run_recorder.RunRecorder` provides all three).
"""

from __future__ import annotations

import gc
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from server_app.compact_updates import narrow_messages, widen_reply
from server_app.packed_wire import pack_messages, unpack_reply
from strategies.reply_filter import ReplyFilter
from strategies.seeded_sampling import seed_node_sampling

NO_REPLY = "no reply within round-timeout (client hung, crashed or disconnected)"


@dataclass
class RoundTrain:
    """What happened in one round's training phase."""

    round: int
    sent: int
    replies: list[Message]
    missing_nodes: list[int]
    metrics: MetricRecord | None
    skipped: str | None = None  # why aggregation did not run, if it did not
    aggregated: bool = False  # the strategy returned new global arrays
    # server-side seconds of the round's phases: configure (sampling, messages), wait (send_and_receive:
    # Ray scheduling, message transfer and every client's work), aggregate (reply checks + strategy)
    phases: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0  # model arrays sent to the sampled clients (serialised size)
    bytes_received: int = 0  # model arrays in their replies
    errors: int = field(init=False)

    def __post_init__(self) -> None:
        self.errors = sum(1 for r in self.replies if r.has_error())

    @property
    def failures(self) -> int:
        """Error replies plus messages that got no reply at all."""
        return self.errors + len(self.missing_nodes)


def _partition_of(reply: Message) -> int | None:
    """The partition id the client reports, if it is one honest clients send (an int in [0, 2**31))."""
    if reply.has_error() or "client-info" not in reply.content.config_records:
        return None
    value = reply.content.config_records["client-info"].get("partition-id")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return None


def reply_order(reply: Message) -> tuple:
    """Sort key: replies with a partition id first, by it; then by sending node."""
    partition = _partition_of(reply)
    return (0, partition, reply.metadata.src_node_id) if partition is not None else (1, 0, reply.metadata.src_node_id)


def unanswered_nodes(messages: list[Message], replies: list[Message]) -> list[int]:
    """Destination nodes of ``messages`` that got no reply (matched by message id, else by node)."""
    answered_ids = {r.metadata.reply_to_message_id for r in replies}
    answered_nodes = {r.metadata.src_node_id for r in replies}
    return sorted(
        m.metadata.dst_node_id for m in messages
        if not (m.metadata.message_id and m.metadata.message_id in answered_ids)
        and not (not m.metadata.message_id and m.metadata.dst_node_id in answered_nodes)
    )


def arrays_bytes(message: Message, key: str = "arrays") -> int:
    """Serialised bytes of a message's model arrays (0 for an error reply or none)."""
    if message.has_error() or key not in message.content.array_records:
        return 0
    return sum(len(array.data) for array in message.content.array_records[key].values())


def sent_bytes(message: Message) -> int:
    """Serialised bytes of every ArrayRecord of an instruction (the model, and ModalityMirror's phase-2
    teacher beside it)."""
    return sum(arrays_bytes(message, key) for key in message.content.array_records)


def client_evaluation(strategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                      timeout: float) -> MetricRecord | None:
    """One round's client-side evaluation (none when the strategy samples no evaluation nodes)."""
    messages = list(strategy.configure_evaluate(server_round, arrays, config, grid))
    if not messages:
        return None
    replies = grid.send_and_receive(messages=messages, timeout=timeout)
    aggregated = strategy.aggregate_evaluate(server_round, sorted(replies, key=reply_order))
    if aggregated is not None:
        log(INFO, "\t└──> Aggregated MetricRecord: %s", aggregated)
    return aggregated


def _log_start(strategy, arrays: ArrayRecord, start_round: int, num_rounds: int, first_config, evaluate_config) -> None:
    log(INFO, "Starting %s strategy at round %d of %d:", strategy.__class__.__name__, start_round, num_rounds)
    log(INFO, "\t├── global model: %d arrays (%.2f MB)", len(arrays), sum(len(a.data) for a in arrays.values()) / 2**20)
    log(INFO, "\t├── train config: %s", dict(first_config.items()) if first_config else "(empty)")
    log(INFO, "\t└── evaluate config: %s", dict(evaluate_config.items()) if evaluate_config else "(empty)")
    strategy.summary()
    log(INFO, "")


def _log_end(result: Result, started: float) -> None:
    log(INFO, "")
    log(INFO, "Strategy execution finished in %.2fs", time.time() - started)
    log(INFO, "")
    log(INFO, "Final results:")
    log(INFO, "")
    for line in io.StringIO(str(result)):
        log(INFO, "\t%s", line.strip("\n"))
    log(INFO, "")


def release_round_garbage() -> int:
    """Collect the round's cyclic garbage now (its replies: a model copy each), not when Python's
    oldest generation next fills (the ServerApp's peak memory grew by about 24 MiB per round without
    it); returns the objects freed. ``run_rounds`` freezes the objects that exist before round 1, so
    this scans only what the rounds made."""
    return gc.collect()


@dataclass
class RoundPlan:
    """What every round of a run shares: who aggregates, where messages go, how they travel, the hooks."""

    strategy: ReplyFilter
    grid: Grid
    timeout: float
    min_replies: int
    compact_updates: bool
    packed: bool
    config_of_round: Callable[[int], ConfigRecord]
    evaluate_config: ConfigRecord
    evaluate_and_record: Callable[[int, ArrayRecord], MetricRecord | None] | None
    record_train: Callable[[RoundTrain], None] | None
    write_checkpoint: Callable[[int, ArrayRecord], None] | None


def play_round(plan: RoundPlan, server_round: int, arrays: ArrayRecord, result: Result) -> ArrayRecord:
    """The server's half of one round, top to bottom; returns the global model after it.

    The clients' half (receive, train locally, reply) is :func:`client_app.app.train`.
    """
    strategy, grid, clock = plan.strategy, plan.grid, time.perf_counter
    started = clock()
    # 1. Sample the round's clients (seeded: strategies.seeded_sampling) and write their instructions.
    messages = list(strategy.configure_train(server_round, arrays, plan.config_of_round(server_round), grid))
    # 2. Encode for the wire: the model as float16 (update-dtype), one buffer per dtype (wire-format='packed').
    if plan.compact_updates:
        messages = narrow_messages(messages, arrays)
    if plan.packed:
        messages = pack_messages(messages)
    configured = clock()
    # 3. Send, and collect the replies that come within round-timeout.
    replies = list(grid.send_and_receive(messages=messages, timeout=plan.timeout)) if messages else []
    received = clock()
    bytes_received = sum(map(arrays_bytes, replies))  # as they travelled
    # 4. Decode back to the global model's layout and dtypes before any check; a fixed order for the sums.
    if plan.packed:
        replies = [unpack_reply(reply, arrays) for reply in replies]
    if plan.compact_updates:
        replies = [widen_reply(reply, arrays) for reply in replies]
    replies.sort(key=reply_order)
    missing = unanswered_nodes(messages, replies)
    if missing:
        log(WARNING, "round %d: %d of %d clients sent no reply within %.0fs", server_round, len(missing),
            len(messages), plan.timeout)
    successes = sum(1 for r in replies if not r.has_error())
    skipped, aggregate, metrics = None, None, None
    if successes < plan.min_replies:
        skipped = f"{successes} successful replies, fewer than the minimum {plan.min_replies}"
        log(WARNING, "round %d: %s; the previous global model is kept", server_round, skipped)
    else:
        # 5. Screen: drop and count every reply that fails a check (strategies.reply_check).
        screened = strategy.screen(server_round, replies)
        # 6. Weigh: data size capped (strategies.weight_cap); keep the old model if too few replies are left.
        strategy.cap_weights(screened)
        metrics = strategy.too_few(server_round, screened)
        if metrics is None:
            # 7. Bound each update's norm (strategies.update_bound), then call the aggregation rule.
            strategy.bound_updates(screened)
            aggregate, metrics = strategy.apply_rule(server_round, screened)
            # 8. Cast to the global model's dtypes; an aggregate that is not finite there is refused.
            aggregate, metrics = strategy.cast_to_model(server_round, screened, aggregate, metrics)
        log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
    phases = {"configure": configured - started, "wait": received - configured, "aggregate": clock() - received}
    if aggregate is not None:
        result.arrays = arrays = aggregate
    if metrics is not None:
        result.train_metrics_clientapp[server_round] = metrics
    # 9. Record: the round's replies and counts, client-side and central evaluation (server_app.run_recorder).
    if plan.record_train is not None:
        plan.record_train(RoundTrain(server_round, len(messages), replies, missing, metrics, skipped,
                                     aggregated=aggregate is not None, phases=phases,
                                     bytes_sent=sum(map(sent_bytes, messages)), bytes_received=bytes_received))
    client_eval = client_evaluation(strategy, grid, server_round, arrays, plan.evaluate_config, plan.timeout)
    if client_eval is not None:
        result.evaluate_metrics_clientapp[server_round] = client_eval
    if plan.evaluate_and_record:
        log(INFO, "Global evaluation")
        evaluated = plan.evaluate_and_record(server_round, arrays)
        log(INFO, "\t└──> MetricRecord: %s", evaluated)
        if evaluated is not None:
            result.evaluate_metrics_serverapp[server_round] = evaluated
    # 10. Checkpoint (server_app.checkpoint), so that a resumed run continues from here.
    if plan.write_checkpoint is not None:
        plan.write_checkpoint(server_round, arrays)
    return arrays


def run_rounds(
    strategy: ReplyFilter,
    grid: Grid,
    arrays: ArrayRecord,
    *,
    num_rounds: int,
    start_round: int = 1,
    timeout: float = 3600.0,
    seed: int = 0,
    min_replies: int = 1,
    compact_updates: bool = False,
    packed: bool = False,
    train_config: ConfigRecord | Callable[[int], ConfigRecord] | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_and_record: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    record_train: Callable[[RoundTrain], None] | None = None,
    write_checkpoint: Callable[[int, ArrayRecord], None] | None = None,
    result: Result | None = None,
) -> Result:
    """Run rounds ``start_round..num_rounds`` (:func:`play_round`) from global ``arrays`` (the model after
    round ``start_round - 1``).

    ``train_config`` is one record for every round or a function of the round
    (the ServerApp sends each round's learning rate this way). ``seed`` seeds
    the strategy's node sampling.

    The initial model is evaluated (round 0) only when ``start_round == 1``.
    ``result`` may carry what earlier rounds produced (a resumed run); its
    ``arrays`` are replaced by each aggregate, as in ``Strategy.start``.
    """
    if start_round < 1:
        raise ValueError("start_round must be >= 1")
    if not isinstance(strategy, ReplyFilter):
        raise TypeError(f"run_rounds needs a strategy with the reply filter's steps, got {type(strategy).__name__}")
    seed_node_sampling(strategy, seed)

    def config_of_round(server_round: int) -> ConfigRecord:
        chosen = train_config(server_round) if callable(train_config) else train_config
        return ConfigRecord() if chosen is None else chosen

    _log_start(strategy, arrays, start_round, num_rounds, config_of_round(start_round), evaluate_config)
    plan = RoundPlan(strategy, grid, timeout, min_replies, compact_updates, packed, config_of_round,
                     ConfigRecord() if evaluate_config is None else evaluate_config, evaluate_and_record,
                     record_train, write_checkpoint)
    result = Result() if result is None else result
    if start_round > 1 and not len(result.arrays):
        result.arrays = arrays

    started = time.time()
    if evaluate_and_record and start_round == 1:
        res = evaluate_and_record(0, arrays)
        log(INFO, "Initial global evaluation results: %s", res)
        if res is not None:
            result.evaluate_metrics_serverapp[0] = res

    gc.freeze()  # imports, datasets, the model: not garbage, so the per-round collections skip them
    try:
        for current_round in range(start_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", current_round, num_rounds)
            arrays = play_round(plan, current_round, arrays, result)
            release_round_garbage()
    finally:
        gc.unfreeze()

    _log_end(result, started)
    return result
