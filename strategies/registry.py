"""Strategy registry: a config name -> a configured Flower strategy.

``STRATEGIES`` maps each name accepted by the run-config key ``strategy`` to a
:class:`StrategySpec`, a callable ``spec(config) -> Strategy`` that also names
the run-config keys the strategy takes:

============== ====================== =========================================
name           class                  run-config keys
============== ====================== =========================================
fedavg         FedAvg                 --
ldawa          L-DAWA                 ldawa-warmup-rounds, ldawa-weighting,
                                      ldawa-normalise
fedprox        flwr FedProx           proximal-mu (sent to clients)
fedadam        flwr FedAdam           fedopt-eta, fedopt-beta1, fedopt-beta2,
                                      fedopt-tau
fedyogi        flwr FedYogi           fedopt-eta, fedopt-beta1, fedopt-beta2,
                                      fedopt-tau
fedadagrad     flwr FedAdagrad        fedopt-eta, fedopt-tau
fedavgm        flwr FedAvgM           server-learning-rate, server-momentum
fedmedian      flwr FedMedian         --
fedtrimmedavg  flwr FedTrimmedAvg     trimmed-beta
============== ====================== =========================================

All of them drop and count bad replies (``strategies.reply_filter``), cap each
reply's weight at ``weight-cap-factor`` x the round's lower median
``num-examples`` (``strategies.weight_cap``; 0 = off) and the FedAvg-based
ones stream the weighted mean (``strategies.streaming``).
A strategy key set away from its default while another strategy is chosen is
reported with a warning (the run config always carries every key, so it cannot
be an error). :func:`make_strategy` builds one by name with explicit keyword
parameters and rejects unknown names and parameters, listing the valid ones.
"""

from __future__ import annotations

from logging import WARNING
from collections.abc import Mapping
from dataclasses import dataclass, field

from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from strategies.robust import (
    RobustFedAdagrad,
    RobustFedAdam,
    RobustFedAvg,
    RobustFedAvgM,
    RobustFedMedian,
    RobustFedProx,
    RobustFedTrimmedAvg,
    RobustFedYogi,
    RobustLDAWA,
)
from strategies.train_metrics import aggregate_train_metrics
from strategies.weight_cap import DEFAULT_FACTOR, check_factor


def _weight_cap_factor(config) -> float:
    """Run-config ``weight-cap-factor`` (default 4.0 until app_config.run_config declares it)."""
    return check_factor(getattr(config, "weight_cap_factor", DEFAULT_FACTOR))


def _common(config) -> dict:
    return {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": config.min_train_nodes,
        "min_evaluate_nodes": config.min_train_nodes if config.fraction_evaluate > 0 else 0,
        "min_available_nodes": config.min_train_nodes,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: its class and ``constructor keyword -> run-config key``."""

    cls: type
    params: Mapping[str, str] = field(default_factory=dict)

    def __call__(self, config) -> Strategy:
        kwargs = {kw: getattr(config, key.replace("-", "_")) for kw, key in self.params.items()}
        strategy = self.cls(**_common(config), **kwargs)
        strategy.weight_cap_factor = _weight_cap_factor(config)
        return strategy


FEDOPT = {"eta": "fedopt-eta", "beta_1": "fedopt-beta1", "beta_2": "fedopt-beta2", "tau": "fedopt-tau"}

STRATEGIES: dict[str, StrategySpec] = {
    "fedavg": StrategySpec(RobustFedAvg),
    "ldawa": StrategySpec(RobustLDAWA, {"warmup_rounds": "ldawa-warmup-rounds",
                                        "weighting": "ldawa-weighting",
                                        "normalise": "ldawa-normalise"}),
    "fedprox": StrategySpec(RobustFedProx, {"proximal_mu": "proximal-mu"}),
    "fedadam": StrategySpec(RobustFedAdam, FEDOPT),
    "fedyogi": StrategySpec(RobustFedYogi, FEDOPT),
    "fedadagrad": StrategySpec(RobustFedAdagrad, {"eta": "fedopt-eta", "tau": "fedopt-tau"}),
    "fedavgm": StrategySpec(RobustFedAvgM, {"server_learning_rate": "server-learning-rate",
                                            "server_momentum": "server-momentum"}),
    "fedmedian": StrategySpec(RobustFedMedian),
    "fedtrimmedavg": StrategySpec(RobustFedTrimmedAvg, {"beta": "trimmed-beta"}),
}

STRATEGY_KEYS = sorted({key for spec in STRATEGIES.values() for key in spec.params.values()})


def _spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown value {name!r}; valid: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def make_strategy(name: str, *, common: Mapping | None = None, weight_cap_factor: float = DEFAULT_FACTOR,
                  **params) -> Strategy:
    """Strategy ``name`` with its own keyword parameters (e.g. ``proximal_mu=0.1``).

    ``common`` holds FedAvg's sampling arguments (``fraction_train``, ...).
    Unknown names or parameters raise ``ValueError`` listing the valid ones.
    """
    spec = _spec(name)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        valid = ", ".join(sorted(spec.params)) or "none"
        raise ValueError(f"strategy {name!r}: unknown parameter {unknown[0]!r}; valid: {valid}")
    common = {"train_metrics_aggr_fn": aggregate_train_metrics, **dict(common or {})}
    strategy = spec.cls(**common, **params)
    strategy.weight_cap_factor = check_factor(weight_cap_factor)
    return strategy


def unused_strategy_keys(config) -> list[str]:
    """Strategy keys set away from their defaults that the chosen strategy ignores."""
    from app_config.run_config import RunConfig

    defaults = RunConfig.keys()
    used = set(_spec(config.strategy).params.values())
    return [key for key in STRATEGY_KEYS
            if key not in used and getattr(config, key.replace("-", "_")) != defaults[key]]


def build_strategy(config) -> Strategy:
    """The strategy named by ``config.strategy`` (validated by RunConfig)."""
    spec = _spec(config.strategy)
    ignored = unused_strategy_keys(config)
    if ignored:
        log(WARNING, "strategy %r ignores %s (it takes: %s)", config.strategy, ", ".join(ignored),
            ", ".join(sorted(spec.params.values())) or "none")
    return spec(config)
