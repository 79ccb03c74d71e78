"""ServerApp: build the strategy from config, run the rounds, evaluate, record, checkpoint.

Rounds run through :func:`server_app.round_loop.run_rounds` (Flower's
``Strategy.start`` loop with a start round, failure counts and a minimum of
successful replies), so a run started with ``resume-from`` continues after the
checkpoint's round in the same run folder: ``metrics.jsonl`` is cut back to the
checkpoint's rounds, the strategy state and RNG states are restored.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from app_config.run_config import RunConfig
from client_app.task import build_model, eval_transforms, scheduled_learning_rate
from data_partition.datasets import load_splits
from models.device import resolve_device
from server_app.central_eval import CentralEvaluator, as_metric_record
from server_app.checkpoint import (
    Checkpoint,
    CheckpointError,
    capture_rng,
    capture_strategy_state,
    config_mismatch,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng,
    restore_strategy_state,
    save_checkpoint,
)
from server_app.round_loop import RoundTrain, run_rounds
from server_app.round_record import client_entries
from server_app.run_output import RunOutput, format_round
from server_app.tensorboard_log import TensorBoardLog
from strategies.registry import build_strategy

app = ServerApp()


def _round_entry(train: RoundTrain, dropped: dict | None = None) -> dict:
    """The round's train numbers as written to metrics.jsonl (client values under their own keys)."""
    metrics = train.metrics
    clients = client_entries(train.replies, train.missing_nodes, dropped=dropped)
    entry = {
        "metrics": {} if metrics is None else {k: v for k, v in metrics.items()},
        "replies": len(train.replies),
        "failures": train.failures,
        "sent": train.sent,
        "no-reply": len(train.missing_nodes),
        "clients": clients,
    }
    if train.skipped:
        entry["aggregation-skipped"] = train.skipped
    return entry


def _evaluations(history: list[dict]) -> dict[int, MetricRecord]:
    """Central evaluation results per round, from metrics.jsonl records (a resumed run's past)."""
    return {int(r["round"]): as_metric_record(r["eval"]) for r in history if "eval" in r}


def _resume_state(config: RunConfig) -> Checkpoint | None:
    if not config.resume_from:
        return None
    checkpoint = load_checkpoint(config.resume_from)
    current = {k.replace("_", "-"): v for k, v in asdict(config).items()}
    problem = config_mismatch(checkpoint.run_config, current)
    if problem:
        raise CheckpointError(f"resume-from: cannot resume, {problem}")
    if checkpoint.strategy_name != config.strategy:
        raise CheckpointError(f"resume-from: checkpoint of strategy {checkpoint.strategy_name!r}, "
                              f"this run uses {config.strategy!r}")
    return checkpoint


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(dict(context.run_config))
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    resume = _resume_state(config)
    root = config.resolved_data_root()
    datasets = {}
    if config.image_dataset:
        datasets["image"] = load_splits(config.image_dataset, root)  # builds the cache clients read
    if config.audio_dataset:
        datasets["audio"] = load_splits(config.audio_dataset, root)

    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(config)
    initial = ArrayRecord(model.state_dict())
    eval_model = build_model(config).to(device)
    evaluator = CentralEvaluator(eval_model, eval_transforms(config, device), datasets, device, config.knn_k, config.seed)
    strategy = build_strategy(config)
    history: list[dict] = []
    result = Result()
    start_round, arrays = 1, initial
    if resume is None:
        output = RunOutput.create(config.run_dir, config, context.run_id)
    else:
        output = RunOutput(resolve_checkpoint(config.resume_from).parent)
        history = [r for r in resume.history if int(r["round"]) <= resume.round]
        output.rewrite_rounds(history)
        restore_strategy_state(strategy, resume.strategy_state)
        restore_rng(resume.rng)
        start_round, arrays = resume.round + 1, resume.arrays
        result.arrays = resume.arrays
        result.evaluate_metrics_serverapp.update(_evaluations(history))
        print(f"[fssuavl] resuming after round {resume.round} from {resolve_checkpoint(config.resume_from)}",
              flush=True)
    tensorboard = TensorBoardLog(output.folder, enabled=config.tensorboard,
                                 purge_step=None if resume is None else resume.round + 1)
    print(f"[fssuavl] run folder: {output.folder}", flush=True)

    train_log: dict[int, dict] = {}
    clock = {"last": time.perf_counter()}
    last_round = config.num_server_rounds

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        due = server_round in (0, last_round) or (config.eval_every and server_round % config.eval_every == 0)
        record: dict = {"round": server_round, "round-seconds": time.perf_counter() - clock["last"]}
        if server_round in train_log:
            train = train_log.pop(server_round)
            record["train"] = train["metrics"]
            for key in ("replies", "failures", "sent", "no-reply", "aggregation-skipped", "clients"):
                if key in train:
                    record[key] = train[key]
        if config.save_every and server_round % config.save_every == 0:
            output.save_model(arrays.to_torch_state_dict(), f"round-{server_round:04d}.pt")
        scores = evaluator(arrays) if due else None
        if scores is not None:
            record["eval"] = scores
        output.append_round(record)
        history.append(record)
        tensorboard.write_round(record)
        print("[fssuavl] " + format_round(record), flush=True)
        clock["last"] = time.perf_counter()
        return None if scores is None else as_metric_record(scores)

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        every = config.checkpoint_every
        if not every or (server_round % every and server_round != last_round):
            return
        save_checkpoint(output.folder, Checkpoint(
            round=server_round, arrays=arrays, strategy_name=config.strategy,
            strategy_state=capture_strategy_state(strategy), rng=capture_rng(config.seed), history=history,
            run_config={k.replace("_", "-"): v for k, v in asdict(config).items()},
            meta={"flower-run-id": int(context.run_id), "written": time.strftime("%Y-%m-%dT%H:%M:%S")},
        ))

    result = run_rounds(
        strategy, grid, arrays, num_rounds=config.num_server_rounds, start_round=start_round,
        timeout=config.round_timeout, seed=config.seed, min_replies=config.min_train_nodes,
        train_config=lambda server_round: ConfigRecord(
            {"learning-rate": scheduled_learning_rate(config, model, server_round)}),
        evaluate_fn=evaluate,
        on_train=lambda train: train_log.__setitem__(
            train.round, _round_entry(train, getattr(strategy, "last_dropped", None))),
        on_round_end=checkpoint, result=result,
    )
    final = result.arrays if len(result.arrays) else arrays
    path = output.save_model(final.to_torch_state_dict())
    summary = {"final-model": str(path), "rounds": config.num_server_rounds}
    if resume is not None:
        summary["resumed-after-round"] = resume.round
    evals = result.evaluate_metrics_serverapp
    if evals:
        first, latest = evals[min(evals)], evals[max(evals)]
        summary.update({f"initial-{k}": v for k, v in first.items()})
        summary.update({f"final-{k}": v for k, v in latest.items()})
    output.write_json("summary.json", summary)
    tensorboard.close()
    print(f"[fssuavl] done: {summary}", flush=True)
