"""ServerApp: check the config, build the model and strategy, then resume-or-create and run the rounds.

The rounds run through :func:`server_app.round_loop.run_rounds` (Flower's
``Strategy.start`` loop with a start round, failure counts and a minimum of
successful replies); :class:`server_app.run_recorder.RunRecorder` writes what
each round leaves behind, and :func:`server_app.run_start.resume_or_create`
decides where the rounds start (a new run folder, or after a checkpoint's
round with ``resume-from``).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from threadpoolctl import threadpool_limits

from app_config.log_setup import setup_logging
from app_config.modalities import AUDIO, IMAGE
from app_config.run_config import RunConfig
from data_partition.datasets import load_splits, resolve_data_root
from data_partition.modality_data import DatasetSplits
from models.device import resolve_device
from models.factory import build_model, eval_transforms, scheduled_learning_rate
from server_app.central_eval import CentralEvaluator
from server_app.creamfl_server import attach_public_set
from server_app.encoder_only import ModelParts
from server_app.preflight import check_federation_plan, checked_run_config
from server_app.round_loop import run_rounds
from server_app.run_recorder import RunRecorder
from server_app.run_start import load_resume, resume_or_create
from strategies.registry import build_strategy

app = ServerApp()


def evaluation_datasets(config: RunConfig) -> dict[str, DatasetSplits]:
    """The run's datasets per modality (loading them also builds the caches the clients read)."""
    root = resolve_data_root(config.data_root)
    names = {IMAGE: config.image_dataset, AUDIO: config.audio_dataset}
    return {modality: load_splits(name, root) for modality, name in names.items() if name}


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_logging()
    config = checked_run_config(context.run_config)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    checkpoint = load_resume(config)  # a resume that cannot work fails before any work
    if config.plan_check:  # in simulation every node is connected from the start
        nodes = len(list(grid.get_node_ids()))
        if nodes:
            check_federation_plan(config, nodes)
    datasets = evaluation_datasets(config)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = build_model(config)
    initial = ArrayRecord(model.state_dict())
    evaluator = CentralEvaluator(build_model(config).to(device), eval_transforms(config, device), datasets, device,
                                 config.knn_k, config.seed, config.eval_train_samples, config.eval_timeout)
    strategy = build_strategy(config)
    attach_public_set(strategy, config, device)  # CreamFL: the public set and the server's own training
    start = resume_or_create(config, context.run_id, checkpoint, strategy, initial)
    recorder = RunRecorder(config, start.output, strategy, evaluator, start.history, start.resumed_after,
                           context.run_id)
    print(f"[fssuavl] run folder: {start.output.folder}", flush=True)
    parts = ModelParts(config.send_encoder_only, start.arrays(initial))  # FASSL: only the encoder travels
    with threadpool_limits(limits=1, user_api="blas"):  # numpy's OpenBLAS, threaded, can hang here: central_eval
        result = run_rounds(
            strategy, grid, parts.sent(start.arrays(initial)), num_rounds=config.num_server_rounds,
            start_round=start.start_round, timeout=config.round_timeout, seed=config.seed,
            min_replies=config.min_train_nodes, compact_updates=config.update_dtype == "float16",
            packed=config.wire_format == "packed",
            train_config=lambda server_round: ConfigRecord(
                {"learning-rate": scheduled_learning_rate(config, model, server_round)}),
            evaluate_and_record=parts.on_whole(recorder.evaluate_and_record), record_train=recorder.record_train,
            write_checkpoint=parts.on_whole(recorder.write_checkpoint),
            result=start.result(),
        )
    recorder.finish(parts.whole_result(result), start.arrays(initial))
