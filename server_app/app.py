"""ServerApp: build the strategy from config, run the rounds, evaluate, record."""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from app_config.run_config import RunConfig
from client_app.task import build_model, eval_transforms
from data_partition.datasets import load_splits
from models.device import resolve_device
from server_app.central_eval import CentralEvaluator, as_metric_record
from server_app.run_output import RunOutput, format_round
from server_app.tensorboard_log import TensorBoardLog
from strategies.registry import build_strategy

app = ServerApp()


def _client_entry(reply) -> dict:
    """One client's own numbers for the round (or its error), before aggregation."""
    entry = {"node-id": reply.metadata.src_node_id}
    if reply.has_error():
        entry["error"] = reply.error.reason
    else:
        for record in reply.content.metric_records.values():
            entry.update({k: v for k, v in record.items()})
        if "client-info" in reply.content.config_records:
            entry.update({k: v for k, v in reply.content["client-info"].items()})
    return entry


def _record_train_metrics(strategy, sink: dict) -> None:
    """Keep each round's aggregated train metrics so they can be written per round."""
    aggregate = strategy.aggregate_train

    def recording(server_round, replies):
        replies = list(replies)
        arrays, metrics = aggregate(server_round, replies)
        sink[server_round] = {
            "metrics": {} if metrics is None else {k: v for k, v in metrics.items()},
            "replies": len(replies),
            "failures": sum(1 for r in replies if r.has_error()),
            "clients": [_client_entry(r) for r in replies],
        }
        return arrays, metrics

    strategy.aggregate_train = recording


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(dict(context.run_config))
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
    output = RunOutput.create(config.run_dir, config, context.run_id)
    tensorboard = TensorBoardLog(output.folder, enabled=config.tensorboard)
    print(f"[fssuavl] run folder: {output.folder}", flush=True)

    strategy = build_strategy(config)
    train_log: dict[int, dict] = {}
    _record_train_metrics(strategy, train_log)
    clock = {"last": time.perf_counter()}
    last_round = config.num_server_rounds

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        due = server_round in (0, last_round) or (config.eval_every and server_round % config.eval_every == 0)
        record: dict = {"round": server_round, "round-seconds": time.perf_counter() - clock["last"]}
        if server_round in train_log:
            record["train"] = train_log[server_round]["metrics"]
            record["replies"] = train_log[server_round]["replies"]
            record["failures"] = train_log[server_round]["failures"]
            record["clients"] = train_log[server_round]["clients"]
        if config.save_every and server_round % config.save_every == 0:
            output.save_model(arrays.to_torch_state_dict(), f"round-{server_round:04d}.pt")
        result = evaluator(arrays) if due else None
        if result is not None:
            record["eval"] = result
        output.append_round(record)
        tensorboard.write_round(record)
        print("[fssuavl] " + format_round(record), flush=True)
        clock["last"] = time.perf_counter()
        return None if result is None else as_metric_record(result)

    result = strategy.start(
        grid=grid, initial_arrays=initial, num_rounds=config.num_server_rounds,
        train_config=ConfigRecord({}), evaluate_fn=evaluate,
    )
    final = result.arrays if result.arrays is not None else initial
    path = output.save_model(final.to_torch_state_dict())
    summary = {"final-model": str(path), "rounds": config.num_server_rounds}
    evals = result.evaluate_metrics_serverapp
    if evals:
        first, latest = evals[min(evals)], evals[max(evals)]
        summary.update({f"initial-{k}": v for k, v in first.items()})
        summary.update({f"final-{k}": v for k, v in latest.items()})
    output.write_json("summary.json", summary)
    tensorboard.close()
    print(f"[fssuavl] done: {summary}", flush=True)
