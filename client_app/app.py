"""ClientApp: local contrastive training on whatever modalities this client holds."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import MetricRecordValues

import client_app
from app_config.log_setup import setup_logging
from app_config.modalities import IMAGE, MODALITIES
from app_config.numbers import positive_number
from app_config.run_config import RunConfig
from client_app.creamfl_client import creamfl_train
from client_app.device_data import is_deployed, local_source
from client_app.dp_clipping import dp_clipping_mod
from client_app.faults import maybe_inject_fault
from client_app.mirror_phase import (
    idle_metrics,
    in_phase_two,
    mirror_settings,
    per_modality,
    takes_part,
    teacher_model,
)
from client_app.partial_update import keep_head, keeps_own_head, load_global, without_head
from client_app.proximal import proximal_mu, proximal_term
from client_app.resources import record_bytes, reply_arrays, resource_report
from client_app.wire_mod import wire_mod
from client_app.worker_cache import ClientState, WorkerCache
from client_app.worker_info import worker_info
from models.factory import eval_transforms
from models.per_modality import modality_network
from ssl_method.local_training import TrainSettings, train_locally, train_settings, training_seed
from ssl_method.losses import pair_loss
from ssl_method.mirror_training import distil_locally

# Outermost: unpacks a packed model and packs the reply (wire-format='packed'); then clips updates when a
# client-side DP mode asks for it (dp='client-fixed' / 'client-adaptive').
app = ClientApp(mods=[wire_mod, dp_clipping_mod])
# This process's run config, model and client data between messages (one run at a time).
WORKER = WorkerCache()
WORKER.note_imports(time.perf_counter() - client_app.IMPORT_STARTED)  # the app's imports, timed from its package


@app.lifespan()
def lifespan(_context: Context) -> Iterator[None]:
    """Around every message: the project's log records reach stderr (set up once per process)."""
    setup_logging()
    yield


def metric_values(metrics: dict[str, float]) -> dict[str, MetricRecordValues]:
    """The same numbers, typed as a MetricRecord takes them."""
    return dict(metrics)


def _identity(context: Context) -> tuple[int, int]:
    node = context.node_config
    if is_deployed(node):  # a device with its own data: the partition id only seeds local training
        return int(node.get("partition-id", context.node_id % 2**31)), int(node.get("num-partitions", 1))
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError("node config needs partition-id and num-partitions (set by the simulation or --node-config), "
                         "or data-dir on a deployed node")
    return int(node["partition-id"]), int(node["num-partitions"])


def _setup(context: Context) -> tuple[RunConfig, int, ClientState]:
    """Run config, partition id and client state of this call."""
    config = WORKER.config(context.run_id, context.run_config)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    partition_id, num_partitions = _identity(context)
    local = local_source(context.node_config, config)
    return config, partition_id, WORKER.state(config, context.run_id, partition_id, num_partitions, local)


def round_learning_rate(train_config) -> float | None:
    """This round's learning rate from the server's train config (None: the recipe's base rate)."""
    value = train_config.get("learning-rate")
    if value is None:
        return None
    if (rate := positive_number(value)) is None:
        raise ValueError(f"train config learning-rate must be a finite number > 0, got {value!r}")
    return rate


def seeded_head(context: Context, config: RunConfig) -> dict | None:
    """The seeded initial head a client starts from when only the encoder travels (send-encoder-only)."""
    return WORKER.initial_head(context.run_id, config) if config.send_encoder_only else None


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrived = time.perf_counter()
    instruction = msg.content.config_records["config"]
    server_round = instruction["server-round"]
    if not isinstance(server_round, int):
        raise ValueError(f"train config server-round must be an int, got {server_round!r}")
    config, partition_id, state = _setup(context)
    maybe_inject_fault(config, server_round, partition_id)  # fault-rate (tests); no-op by default
    seed = training_seed(config.seed, server_round, partition_id)
    creamfl = config.strategy == "creamfl"  # CreamFL: public-set representations travel, the model stays here
    own_head = keeps_own_head(config)  # FedVSSL's partial weight updating, FASSL's encoder-only transmission
    used_own_head, extra_loss = False, None
    if not creamfl:
        used_own_head = load_global(state.model, msg.content.array_records["arrays"],
                                    context.state if own_head else None, seeded_head(context, config))
        extra_loss = proximal_term(state.model, proximal_mu(instruction))  # FedProx; None otherwise
    settings = train_settings(config, state.model, round_learning_rate(instruction))
    import_seconds = WORKER.take_import_seconds()
    ready = time.perf_counter() - arrived + import_seconds  # cold start: until the first training step
    arrays: ArrayRecord | None = None
    if creamfl:
        metrics, arrays = creamfl_train(
            msg.content, context.state, config, state, settings, seed,
            lambda indices: WORKER.public_samples(context.run_id, config, indices),
            WORKER.initial_model(context.run_id, config))
    elif in_phase_two(config, server_round):  # ModalityMirror's distillation, audio-visual clients only
        metrics = phase_two(msg.content, config, state, settings, seed)
    else:
        metrics = train_locally(state.model, state.data, state.views, settings, state.device, seed=seed,
                                extra_loss=extra_loss)
        metrics["num-examples"] = float(state.data.total())
    metrics["learning-rate"] = settings.learning_rate
    metrics.update({"ready-seconds": ready, "import-seconds": import_seconds, **state.setup_seconds})
    metrics.update(resource_report())
    if own_head:
        keep_head(state.model, context.state)
        metrics["own-head"] = float(used_own_head)
    if arrays is None:
        arrays = reply_arrays(state.model, config.update_dtype)
    if config.send_encoder_only:
        arrays = without_head(arrays)
    metrics["bytes-received"] = float(sum(map(record_bytes, msg.content.array_records.values())))
    metrics["bytes-sent"] = float(record_bytes(arrays))
    reply = RecordDict({
        "arrays": arrays,
        "metrics": MetricRecord(metric_values(metrics)),
        "client-info": worker_info(partition_id, state.kind, state.device.type),
    })
    return Message(content=reply, reply_to=msg)


def phase_two(content: RecordDict, config: RunConfig, state: ClientState, settings: TrainSettings,
              seed: int) -> dict[str, float]:
    """ModalityMirror's phase 2 (``client_app.mirror_phase``): distil into the audio encoder, or reply idle."""
    mirror = mirror_settings(config)
    if mirror is None or not takes_part(state.data):
        return idle_metrics(state.data)
    teacher = teacher_model(state.model, content)
    image_eval = eval_transforms(config, state.device)[IMAGE]
    metrics = distil_locally(per_modality(state.model), teacher, state.data, state.views, image_eval, settings, mirror,
                             state.device, seed)
    metrics["num-examples"] = metrics["num-audio-examples"]
    return metrics


@app.evaluate()
@torch.no_grad()
def evaluate(msg: Message, context: Context) -> Message:
    """The SSL loss of the global model on (augmented) local data: a label-free health check."""
    config, partition_id, state = _setup(context)
    load_global(state.model, msg.content.array_records["arrays"], None, seeded_head(context, config))
    state.model.eval()
    torch.manual_seed(training_seed(config.seed, -1, partition_id))
    objective = pair_loss(config.ssl_objective, config.temperature, config.barlow_lambda)
    metrics = {"loss": 0.0}
    for modality in state.data.modalities:
        batch = state.data.tensors[modality][: config.batch_size].to(state.device)
        views, network = state.views[modality], modality_network(state.model, modality)
        loss = objective(network(views(batch)), network(views(batch))).item()
        metrics[f"eval-loss-{modality}"] = loss
        metrics["loss"] += loss
    for modality in MODALITIES:
        metrics.setdefault(f"eval-loss-{modality}", 0.0)
    metrics["num-examples"] = float(state.data.total())
    return Message(content=RecordDict({"metrics": MetricRecord(metric_values(metrics))}), reply_to=msg)
