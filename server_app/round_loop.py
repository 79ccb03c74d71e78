"""The federated round loop, resumable: Flower's ``Strategy.start`` with a start round.

Why not ``strategy.start``: it always counts rounds from 1 and evaluates the
initial model as round 0, so a run resumed from a checkpoint of round ``k``
would restart the round numbers, and strategies whose maths depends on the
round (FedAdam's bias correction uses ``server_round``; L-DAWA's warm-up is
"round <= warmup") would compute something else than the uninterrupted run.
:func:`run_rounds` is the same loop -- it calls the strategy's own
``configure_train`` / ``aggregate_train`` / ``configure_evaluate`` /
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
  before central evaluation; ``write_checkpoint(round, arrays)`` runs after it
  (the ServerApp writes its checkpoint there).
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


def train_round(strategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                timeout: float, min_replies: int,
                compact_updates: bool = False, packed: bool = False) -> tuple[RoundTrain, ArrayRecord | None]:
    """One round's training phase: send, collect (in partition order), count failures, aggregate.

    Returns what happened and the new global arrays (None: the previous model is kept).
    """
    clock = time.perf_counter
    started = clock()
    messages = list(strategy.configure_train(server_round, arrays, config, grid))
    if compact_updates:  # update-dtype='float16': the global model goes out as float16
        messages = narrow_messages(messages, arrays)
    if packed:  # wire-format='packed': one buffer per dtype instead of one object per array
        messages = pack_messages(messages)
    configured = clock()
    replies = list(grid.send_and_receive(messages=messages, timeout=timeout)) if messages else []
    received = clock()
    bytes_received = sum(map(arrays_bytes, replies))  # as they travelled
    if packed:  # unpacked against the global model's layout before any check
        replies = [unpack_reply(reply, arrays) for reply in replies]
    if compact_updates:  # and the replies come back to the global dtypes before any check
        replies = [widen_reply(reply, arrays) for reply in replies]
    replies.sort(key=reply_order)
    missing = unanswered_nodes(messages, replies)
    successes = sum(1 for r in replies if not r.has_error())
    if missing:
        log(WARNING, "round %d: %d of %d clients sent no reply within %.0fs", server_round, len(missing),
            len(messages), timeout)
    skipped = None
    if successes < min_replies:
        skipped = f"{successes} successful replies, fewer than the minimum {min_replies}"
        log(WARNING, "round %d: %s; the previous global model is kept", server_round, skipped)
        agg_arrays, agg_metrics = None, None
    else:
        agg_arrays, agg_metrics = strategy.aggregate_train(server_round, replies)
    phases = {"configure": configured - started, "wait": received - configured, "aggregate": clock() - received}
    if agg_metrics is not None:
        log(INFO, "\t└──> Aggregated MetricRecord: %s", agg_metrics)
    return (RoundTrain(server_round, len(messages), replies, missing, agg_metrics, skipped,
                       aggregated=agg_arrays is not None, phases=phases,
                       bytes_sent=sum(map(arrays_bytes, messages)), bytes_received=bytes_received),
            agg_arrays)


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


def run_rounds(
    strategy,
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
    """Run rounds ``start_round..num_rounds`` from global ``arrays`` (the model after round ``start_round - 1``).

    ``train_config`` is one record for every round or a function of the round
    (the ServerApp sends each round's learning rate this way). ``seed`` seeds
    the strategy's node sampling.

    The initial model is evaluated (round 0) only when ``start_round == 1``.
    ``result`` may carry what earlier rounds produced (a resumed run); its
    ``arrays`` are replaced by each aggregate, as in ``Strategy.start``.
    """
    if start_round < 1:
        raise ValueError("start_round must be >= 1")
    seed_node_sampling(strategy, seed)
    config_of_round = train_config if callable(train_config) else (lambda _round: train_config)
    _log_start(strategy, arrays, start_round, num_rounds, config_of_round(start_round), evaluate_config)
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
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
            round_config = config_of_round(current_round)
            train, aggregated = train_round(strategy, grid, current_round, arrays,
                                            ConfigRecord() if round_config is None else round_config,
                                            timeout, min_replies, compact_updates, packed)
            if aggregated is not None:
                result.arrays = arrays = aggregated
            if train.metrics is not None:
                result.train_metrics_clientapp[current_round] = train.metrics
            if record_train is not None:
                record_train(train)
            client_eval = client_evaluation(strategy, grid, current_round, arrays, evaluate_config, timeout)
            if client_eval is not None:
                result.evaluate_metrics_clientapp[current_round] = client_eval
            if evaluate_and_record:
                log(INFO, "Global evaluation")
                res = evaluate_and_record(current_round, arrays)
                log(INFO, "\t└──> MetricRecord: %s", res)
                if res is not None:
                    result.evaluate_metrics_serverapp[current_round] = res
            if write_checkpoint is not None:
                write_checkpoint(current_round, arrays)
            del train, aggregated
            release_round_garbage()
    finally:
        gc.unfreeze()

    _log_end(result, started)
    return result
