"""Strategy registry: a config name -> a configured Flower strategy."""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import FedAvg, Strategy

from strategies.ldawa import LDAWA
from strategies.train_metrics import aggregate_train_metrics


def _common(config) -> dict:
    return {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": config.min_train_nodes,
        "min_evaluate_nodes": config.min_train_nodes if config.fraction_evaluate > 0 else 0,
        "min_available_nodes": config.min_train_nodes,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "fedavg": lambda config: FedAvg(**_common(config)),
    "ldawa": lambda config: LDAWA(warmup_rounds=config.ldawa_warmup_rounds, **_common(config)),
}


def build_strategy(config) -> Strategy:
    """The strategy named by ``config.strategy`` (validated by RunConfig)."""
    return STRATEGIES[config.strategy](config)
