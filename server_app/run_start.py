"""Resume or create: where a run's rounds start and which folder they write to.

A fresh run gets a new run folder and starts at round 1 from the initial
model. A run started with ``resume-from`` continues after the checkpoint's
round in the checkpoint's run folder: ``metrics.jsonl`` is cut back to the
checkpoint's rounds, the strategy's state and the RNG states are restored, and
the rounds already evaluated are carried into the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from app_config.run_config import RunConfig
from server_app.central_eval import as_metric_record
from server_app.checkpoint import (
    Checkpoint,
    CheckpointError,
    arrays_problem,
    config_mismatch,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng,
    restore_strategy_state,
)
from server_app.run_output import RunOutput


def load_resume(config: RunConfig) -> Checkpoint | None:
    """The checkpoint to resume from (None for a fresh run); CheckpointError when it does not fit this run."""
    if not config.resume_from:
        return None
    checkpoint = load_checkpoint(config.resume_from)
    problem = config_mismatch(checkpoint.run_config, config.as_mapping())
    if problem:
        raise CheckpointError(f"resume-from: cannot resume, {problem}")
    if checkpoint.strategy_name != config.strategy:
        raise CheckpointError(f"resume-from: checkpoint of strategy {checkpoint.strategy_name!r}, "
                              f"this run uses {config.strategy!r}")
    return checkpoint


def evaluations(history: list[dict]) -> dict[int, MetricRecord]:
    """Central evaluation results per round, from metrics.jsonl records (a resumed run's past)."""
    return {int(r["round"]): as_metric_record(r["eval"]) for r in history if "eval" in r}


@dataclass
class RunStart:
    """Where the rounds start: the run folder, the checkpoint resumed (None: fresh) and the rounds kept."""

    output: RunOutput
    checkpoint: Checkpoint | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def start_round(self) -> int:
        return 1 if self.checkpoint is None else self.checkpoint.round + 1

    @property
    def resumed_after(self) -> int | None:
        return None if self.checkpoint is None else self.checkpoint.round

    def arrays(self, initial: ArrayRecord) -> ArrayRecord:
        """The global model the first round starts from."""
        return initial if self.checkpoint is None else self.checkpoint.arrays

    def result(self) -> Result:
        """A Result holding what the rounds before the start produced."""
        result = Result()
        if self.checkpoint is not None:
            result.arrays = self.checkpoint.arrays
            result.evaluate_metrics_serverapp.update(evaluations(self.history))
        return result


def resume_or_create(config: RunConfig, run_id: int, checkpoint: Checkpoint | None, strategy,
                     model: ArrayRecord | None = None) -> RunStart:
    """A new run folder, or the resumed one with ``strategy`` and the RNGs restored from ``checkpoint``.

    The checkpoint is checked whole (its model against this run's ``model``, the
    strategy state, the RNG state) before the run folder is touched: a refused
    resume leaves the interrupted run's files as they were.
    """
    if checkpoint is None:
        return RunStart(RunOutput.create(config.run_dir, config, run_id))
    if model is not None and (problem := arrays_problem(checkpoint.arrays, model)) is not None:
        raise CheckpointError(f"resume-from: cannot resume, {problem}")
    if checkpoint.round >= config.num_server_rounds:
        raise CheckpointError(f"resume-from: the checkpoint is after round {checkpoint.round} and "
                              f"num-server-rounds is {config.num_server_rounds}: no round is left to run")
    restore_strategy_state(strategy, checkpoint.strategy_state)
    restore_rng(checkpoint.rng)
    path = resolve_checkpoint(config.resume_from)
    output = RunOutput(path.parent)
    history = [r for r in checkpoint.history if int(r["round"]) <= checkpoint.round]
    output.rewrite_rounds(history)  # only now: everything above can still refuse the resume
    print(f"[fssuavl] resuming after round {checkpoint.round} from {path}", flush=True)
    return RunStart(output, checkpoint, history)
