"""ClientApp: local contrastive training on whatever modalities this client holds."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from app_config.run_config import RunConfig
from client_app.losses import nt_xent
from client_app.proximal import proximal_mu, proximal_term
from client_app.task import client_state, train_settings
from client_app.trainer import train_locally
from client_app.worker_info import worker_info

app = ClientApp()


def _identity(context: Context) -> tuple[int, int]:
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError("node config needs partition-id and num-partitions (set by the simulation or --node-config)")
    return int(node["partition-id"]), int(node["num-partitions"])


def _round_seed(config: RunConfig, server_round: int, partition_id: int) -> int:
    return (config.seed * 1_000_003 + server_round * 10_007 + partition_id) % (2**31)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = RunConfig.from_mapping(dict(context.run_config))
    partition_id, num_partitions = _identity(context)
    state = client_state(config, context.run_id, partition_id, num_partitions)
    state.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"]["server-round"])
    extra_loss = proximal_term(state.model, proximal_mu(msg.content["config"]))  # FedProx; None otherwise
    metrics = train_locally(
        state.model, state.data, state.views, train_settings(config), state.device,
        seed=_round_seed(config, server_round, partition_id), extra_loss=extra_loss,
    )
    metrics["num-examples"] = float(sum(state.data.count(m) for m in state.data.modalities))
    reply = RecordDict({
        "arrays": ArrayRecord(state.model.state_dict()),
        "metrics": MetricRecord(metrics),
        "client-info": worker_info(partition_id, state.kind),
    })
    return Message(content=reply, reply_to=msg)


@app.evaluate()
@torch.no_grad()
def evaluate(msg: Message, context: Context) -> Message:
    """NT-Xent of the global model on (augmented) local data: a label-free health check."""
    config = RunConfig.from_mapping(dict(context.run_config))
    partition_id, num_partitions = _identity(context)
    state = client_state(config, context.run_id, partition_id, num_partitions)
    state.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    state.model.eval()
    torch.manual_seed(_round_seed(config, -1, partition_id))
    metrics = {"loss": 0.0}
    for modality in state.data.modalities:
        batch = state.data.tensors[modality][: config.batch_size].to(state.device)
        views = state.views[modality]
        loss = nt_xent(state.model(views(batch)), state.model(views(batch)), config.temperature).item()
        metrics[f"eval-loss-{modality}"] = loss
        metrics["loss"] += loss
    for modality in ("image", "audio"):
        metrics.setdefault(f"eval-loss-{modality}", 0.0)
    metrics["num-examples"] = float(sum(state.data.count(m) for m in state.data.modalities))
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
