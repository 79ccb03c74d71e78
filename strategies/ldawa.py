"""L-DAWA: layer-wise divergence-aware weight aggregation (Rehman et al.).

For client k and every parameter tensor l with at least one dimension,
``delta_k^l = <w_k^l, w_g^l> / (||w_k^l|| ||w_g^l||)`` -- the cosine between the
client's layer and the *previous global* layer -- clipped to at most 1. The new
global layer is the uniform mean ``(1/K) sum_k delta_k^l w_k^l``: no data-size
weights, no renormalisation by the sum of deltas. 0-dim tensors (e.g. BN's
``num_batches_tracked``) are averaged unscaled; a client layer of norm 0 is left
unscaled, as in the reference implementation (``L-DAWA-Agg.py``).

One deviation, documented: where the previous global layer has norm 0 (e.g.
zero-initialised BN biases in round 1) the reference divides by zero and yields
NaN; here the cosine is taken as 1 (plain averaging of that layer).

The first ``warmup_rounds`` rounds use Flower's data-size-weighted FedAvg, as
the reference's training scripts do.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


def layer_cosine(client: np.ndarray, global_: np.ndarray) -> float:
    """Clipped cosine between a client layer and the previous global layer."""
    c = client.astype(np.float64, copy=False).ravel()
    g = global_.astype(np.float64, copy=False).ravel()
    cn, gn = np.linalg.norm(c), np.linalg.norm(g)
    if cn == 0 or gn == 0:
        return 1.0
    return min(float(c @ g / (cn * gn)), 1.0)


def ldawa_aggregate(
    clients: list[dict[str, np.ndarray]], global_: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """Aggregate client state dicts; also return each layer's per-client deltas.

    The mean is accumulated one client at a time (float64), so memory holds the
    running sum plus one client layer, not all clients at once.
    """
    if not clients:
        raise ValueError("L-DAWA needs at least one client")
    out: dict[str, np.ndarray] = {}
    deltas: dict[str, list[float]] = {}
    k = len(clients)
    for name, g in global_.items():
        acc = np.zeros(g.shape, np.float64)
        layer_deltas = []
        for client in clients:
            w = client[name]
            if w.ndim >= 1:
                d = layer_cosine(w, g)
                layer_deltas.append(d)
                acc += d * w
            else:
                acc += w
        if layer_deltas:
            deltas[name] = layer_deltas
        out[name] = (acc / k).astype(g.dtype)
    return out, deltas


def layer_group(name: str) -> str:
    """Coarse group of a parameter name for reporting (encoder stage / projector)."""
    parts = name.split(".")
    if parts[0] == "encoder" and len(parts) > 1:
        return "encoder." + parts[1]
    return parts[0]


class LDAWA(FedAvg):
    """FedAvg with L-DAWA's layer-wise divergence-aware aggregation."""

    def __init__(self, *args, warmup_rounds: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.warmup_rounds = warmup_rounds
        self._global: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._global = arrays  # the previous global model the cosines are measured against
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if server_round <= self.warmup_rounds or self._global is None:
            return super().aggregate_train(server_round, replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        names = list(self._global.keys())
        global_np = dict(zip(names, self._global.to_numpy_ndarrays()))
        clients = []
        for content in contents:
            record = content[self.arrayrecord_key]
            clients.append(dict(zip(list(record.keys()), record.to_numpy_ndarrays())))
        merged, deltas = ldawa_aggregate(clients, global_np)
        arrays = ArrayRecord({n: Array(merged[n]) for n in names})
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        groups: dict[str, list[float]] = {}
        for name, ds in deltas.items():
            groups.setdefault(layer_group(name), []).extend(ds)
        for group, ds in sorted(groups.items()):
            metrics[f"ldawa-delta/{group}"] = float(np.mean(ds))
        all_deltas = [d for ds in deltas.values() for d in ds]
        metrics["ldawa-delta-mean"] = float(np.mean(all_deltas))
        metrics["ldawa-divergence"] = float(1.0 - np.mean(all_deltas))
        return arrays, metrics
