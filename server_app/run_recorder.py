"""Everything a run leaves behind, round by round: metrics.jsonl, TensorBoard, checkpoints, saved models.

The round loop (``server_app.round_loop.run_rounds``) calls a
:class:`RunRecorder` at three points of each round:

* ``record_train(train)`` after aggregation: the round's train numbers and
  per-client entries are kept until the round ends;
* ``evaluate_and_record(round, arrays)`` as the loop's ``evaluate_and_record``: central
  evaluation when due, the round's record appended to ``metrics.jsonl``, the
  history and TensorBoard, ``round-NNNN.pt`` every ``save-every`` rounds and
  the one-line summary printed;
* ``write_checkpoint(round, arrays)`` as the loop's ``write_checkpoint``: ``checkpoint.pt`` every
  ``checkpoint-every`` rounds and after the last.

``finish(result)`` saves the final model and ``summary.json``. The recorder
needs no Flower run: tests drive it with arrays and fake evaluators.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from app_config.run_config import RunConfig
from server_app.central_eval import EvaluationSkipped, as_metric_record
from server_app.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    capture_strategy_state,
    save_checkpoint,
)
from server_app.model_selection import BestModels, best_file
from server_app.round_loop import RoundTrain
from server_app.round_record import client_entries
from server_app.round_time import time_split
from server_app.run_output import RunOutput, format_round
from server_app.tensorboard_log import TensorBoardLog

log = logging.getLogger(__name__)


class NothingTrained(RuntimeError):
    """The run finished without aggregating a single reply: it must not look like a success."""


ROUND_KEYS = ("aggregated", "replies", "failures", "sent", "no-reply", "aggregation-skipped", "clients",
              "phase-seconds", "bytes-sent", "bytes-received")


def round_entry(train: RoundTrain, dropped: dict | None = None) -> dict:
    """The round's train numbers as written to metrics.jsonl (client values under their own keys)."""
    metrics = train.metrics
    entry = {
        "metrics": {} if metrics is None else dict(metrics.items()),
        "aggregated": train.aggregated,
        "replies": len(train.replies),
        "failures": train.failures,
        "sent": train.sent,
        "no-reply": len(train.missing_nodes),
        "clients": client_entries(train.replies, train.missing_nodes, dropped=dropped),
        "phase-seconds": dict(train.phases),
        "bytes-sent": train.bytes_sent,
        "bytes-received": train.bytes_received,
    }
    if train.skipped:
        entry["aggregation-skipped"] = train.skipped
    return entry


class RunRecorder:
    """Writes a run's rounds; see the module docstring for when each method is called."""

    def __init__(self, config: RunConfig, output: RunOutput, strategy, evaluator: Callable[[ArrayRecord], dict],
                 history: list[dict] | None = None, resumed_after: int | None = None, flower_run_id: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config, self.output, self.strategy, self.evaluator = config, output, strategy, evaluator
        self.history = list(history or [])
        self.resumed_after, self.flower_run_id, self.clock = resumed_after, flower_run_id, clock
        self.tensorboard = TensorBoardLog(output.folder, enabled=config.tensorboard,
                                          purge_step=None if resumed_after is None else resumed_after + 1)
        self._pending: dict[int, dict] = {}
        self._last = clock()
        self.best_models = BestModels(self.history) if config.keep_best_models else None

    # --------------------------------------------------------------- round hooks
    def record_train(self, train: RoundTrain) -> None:
        self._pending[train.round] = round_entry(train, getattr(self.strategy, "last_dropped", None))

    def eval_due(self, server_round: int) -> bool:
        every = self.config.eval_every
        return server_round in (0, self.config.num_server_rounds) or bool(every and server_round % every == 0)

    def evaluate_and_record(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        record: dict = {"round": server_round, "round-seconds": self.clock() - self._last}
        if server_round in self._pending:
            train = self._pending.pop(server_round)
            record["train"] = train["metrics"]
            record.update({key: train[key] for key in ROUND_KEYS if key in train})
        if self.config.save_every and server_round % self.config.save_every == 0:
            self.output.save_model(arrays.to_torch_state_dict(), f"round-{server_round:04d}.pt")
        scores = None
        if self.eval_due(server_round):
            try:
                scores = self.evaluator(arrays)
            except EvaluationSkipped as skipped:
                record["eval-skipped"] = str(skipped)
        if scores is not None:
            record["eval"] = scores
            if self.best_models is not None and server_round > 0:  # FASSL's task-aware selection
                improved = self.best_models.offer(server_round, scores)
                if improved:
                    state = arrays.to_torch_state_dict()
                    for task in improved:
                        self.output.save_model(state, best_file(task))
                    record["best-for"] = improved
        self.output.append_round(record)
        self.history.append(record)
        self.tensorboard.write_round(record)
        print("[fssuavl] " + format_round(record), flush=True)
        split = time_split(record)
        if split:
            print(f"[fssuavl] time of round {server_round:>3} | {split}", flush=True)
        self._last = self.clock()
        return None if scores is None else as_metric_record(scores)

    def write_checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        every, last = self.config.checkpoint_every, self.config.num_server_rounds
        if not every or (server_round % every and server_round != last):
            return
        try:
            state = capture_strategy_state(self.strategy)
        except CheckpointError as err:  # a state that a resume would refuse is not written
            log.warning("round %d: checkpoint not written (the previous one is kept): %s", server_round, err)
            return
        save_checkpoint(self.output.folder, Checkpoint(
            round=server_round, arrays=arrays, strategy_name=self.config.strategy,
            strategy_state=state, rng=capture_rng(self.config.seed),
            history=self.history, run_config=self.config.as_mapping(),
            meta={"flower-run-id": int(self.flower_run_id), "written": time.strftime("%Y-%m-%dT%H:%M:%S")},
        ))

    # --------------------------------------------------------------- end of the run
    def finish(self, result: Result, fallback: ArrayRecord) -> dict:
        """Save the final model (``fallback`` when no round aggregated) and ``summary.json``; return the summary."""
        final = result.arrays if len(result.arrays) else fallback
        path = self.output.save_model(final.to_torch_state_dict())
        summary: dict = {"final-model": str(path), "rounds": self.config.num_server_rounds}
        if self.resumed_after is not None:
            summary["resumed-after-round"] = self.resumed_after
        evals = result.evaluate_metrics_serverapp
        if evals:
            first, latest = evals[min(evals)], evals[max(evals)]
            summary.update({k: v for k, v in first.items() if k.startswith("floor-")})  # the raw input's scores
            summary.update({f"initial-{k}": v for k, v in first.items() if not k.startswith("floor-")})
            summary.update({f"final-{k}": v for k, v in latest.items() if not k.startswith("floor-")})
        if self.best_models is not None:
            summary["selected-models"] = self.best_models.summary()
        totals = self.reply_totals()
        rounds_run = sum(1 for r in self.history if r.get("round", 0) > 0)
        summary.update(totals)
        self.output.write_json("summary.json", summary)
        self.tensorboard.close()
        print(f"[fssuavl] done: {summary}", flush=True)
        if rounds_run and not totals["rounds-aggregated"]:
            raise NothingTrained(f"no round aggregated any reply ({totals['train-messages-failed']} of "
                                 f"{totals['train-messages-sent']} train messages failed); the final model is the "
                                 "initial one. See the round lines above for the first error.")
        if totals["train-messages-failed"] * 2 > totals["train-messages-sent"]:
            print(f"[fssuavl] warning: {totals['train-messages-failed']} of {totals['train-messages-sent']} train "
                  "messages failed (more than half); see the round lines above", flush=True)
        return summary

    def reply_totals(self) -> dict:
        """Train messages sent and failed, and rounds that aggregated, over every round of the run so far
        (rounds recorded before ``aggregated`` was written count as aggregated)."""
        rounds = [r for r in self.history if r.get("round", 0) > 0]
        return {
            "train-messages-sent": sum(int(r.get("sent", 0)) for r in rounds),
            "train-messages-failed": sum(int(r.get("failures", 0)) for r in rounds),
            "rounds-aggregated": sum(1 for r in rounds if r.get("aggregated", True)),
        }
