"""Strategy registry: a config name -> an aggregation rule inside the project's one strategy shell.

``STRATEGIES`` maps each name accepted by the run-config key ``strategy`` to a
:class:`StrategySpec`, a callable ``spec(config) -> RuleStrategy`` that builds the
name's aggregation rule (a plain object, :mod:`strategies.aggregation_rule`),
puts it in :class:`strategies.rule_strategy.RuleStrategy` (seeded sampling and
reply screening) and names the run-config keys the rule takes:

============== ====================== =========================================
name           aggregation rule       run-config keys
============== ====================== =========================================
fedavg         WeightedMean           --
ldawa          LDAWA                  ldawa-warmup-rounds, ldawa-weighting,
                                      ldawa-normalise
fedvssl        FedVSSL                fedvssl-alpha, fedvssl-beta, fedvssl-loss
                                      (clients: fedvssl-partial-update)
modality-wise  MirrorRule             mirror-phase1-rounds (clients:
               (ModalityMirror;       mirror-temperature, mirror-fusion,
               MirrorStrategy shell)  mirror-distill-weight,
                                      mirror-ssl-weight); needs
                                      encoder-layout='per-modality'
creamfl        CreamFLRule            creamfl-public-size, creamfl-kd-weight
               (CreamFL; CreamFLStrategy (clients: creamfl-tau,
               shell: banks of public creamfl-regulariser-weight); the
               representations out, server trains on the public set
               representations back)  (server_app.creamfl_server)
fedprox        WeightedMean           proximal-mu (sent to clients)
fedadam        FedAdam                fedopt-eta, fedopt-beta1, fedopt-beta2,
                                      fedopt-tau
fedyogi        FedYogi                fedopt-eta, fedopt-beta1, fedopt-beta2,
                                      fedopt-tau
fedadagrad     FedAdagrad             fedopt-eta, fedopt-tau
fedavgm        FedAvgM                server-learning-rate, server-momentum
fedmedian      flwr FedMedian         --
fedtrimmedavg  flwr FedTrimmedAvg     trimmed-beta
krum           flwr Krum              num-malicious-nodes
multikrum      flwr MultiKrum         num-malicious-nodes, multikrum-select
bulyan         flwr Bulyan            num-malicious-nodes (needs at least
                                      4 x num-malicious-nodes + 3 replies)
============== ====================== =========================================

Keys every strategy takes:

* ``weight-cap-factor`` (float, default 4.0; 0 = off, else >= 1): no reply
  weighs more than this many times the round's lower median ``num-examples``
  (:mod:`strategies.weight_cap`);
* ``update-norm-cap-factor`` (float, default 10.0; 0 = off, else >= 1): no
  reply's update is larger than this many times the round's lower-median
  update norm (:mod:`strategies.update_bound`);
* ``dp`` (``none``, ``server-fixed``, ``client-fixed``, ``server-adaptive``,
  ``client-adaptive``) wraps the chosen strategy in Flower's differential-
  privacy wrapper, with ``dp-noise-multiplier`` (sigma >= 0, default 1.0),
  ``dp-clipping-norm`` (C > 0, default 1.0; the adaptive modes' initial norm),
  ``dp-sampled-clients`` (m >= 0, default 0 = ``min-train-nodes``; noise std
  is ``sigma C / m``), ``dp-target-quantile`` (adaptive, [0, 1], default 0.5)
  ``dp-clip-norm-lr`` (adaptive, > 0, default 0.2) and
  ``dp-clipped-count-stddev`` (adaptive, >= 0, default 0 = m / 20; must
  exceed sigma / 2); see :mod:`strategies.dp`. The client modes need ``dp_clipping_mod`` on the
  ClientApp.

All of them drop and count bad replies (``strategies.reply_filter``) and the
rules built on the weighted mean stream it (``strategies.streaming``); the
``flwr`` rows are Flower's strategies, unchanged, behind one adapter
(``strategies.flower_rules``).
A strategy key set away from its default while another strategy is chosen is
reported with a warning (the run config always carries every key, so it cannot
be an error). :func:`make_strategy` builds one by name with explicit keyword
parameters and rejects unknown names and parameters, listing the valid ones.
Every key, its default and its bounds are declared once, in
``app_config.run_config.RunConfig``, which also lists the names above (a test
keeps the two lists equal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from logging import WARNING

from flwr.common import log

from app_config.run_config import RunConfig
from strategies.aggregation_rule import AggregationRule
from strategies.creamfl_strategy import CreamFLRule, CreamFLStrategy
from strategies.dp import DPAdapter, DPSettings, wrap_dp
from strategies.fedvssl import FedVSSL
from strategies.flower_rules import bulyan, fedmedian, fedtrimmedavg, krum, multikrum
from strategies.ldawa import LDAWA
from strategies.mirror_phases import MirrorRule, MirrorStrategy
from strategies.rule_strategy import RuleStrategy
from strategies.server_optimisers import FedAdagrad, FedAdam, FedAvgM, FedYogi
from strategies.train_metrics import aggregate_train_metrics
from strategies.weight_cap import DEFAULT_FACTOR, DEFAULT_NORM_FACTOR, check_factor
from strategies.weighted_mean import WeightedMean


def config_value(config, key: str):
    """The value of run-config ``key`` (hyphens) in ``config``."""
    return getattr(config, key.replace("-", "_"))


def _common(config) -> dict:
    return {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": config.min_train_nodes,
        "min_evaluate_nodes": config.min_train_nodes if config.fraction_evaluate > 0 else 0,
        "min_available_nodes": config.min_train_nodes,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }


def in_shell(rule: AggregationRule, sampling: Mapping, weight_cap_factor: float,
             update_norm_cap_factor: float, shell: type[RuleStrategy] = RuleStrategy) -> RuleStrategy:
    """``rule`` inside the strategy ``shell``, with FedAvg's ``sampling`` arguments and both influence caps."""
    strategy = shell(rule, **sampling)
    strategy.weight_cap_factor = check_factor(weight_cap_factor)
    strategy.update_norm_cap_factor = check_factor(update_norm_cap_factor, "update-norm-cap-factor")
    return strategy


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: the factory of its aggregation rule and ``factory keyword -> run-config key``."""

    rule: Callable[..., AggregationRule]
    params: Mapping[str, str] = field(default_factory=dict)
    shell: type[RuleStrategy] = RuleStrategy  # ModalityMirror's adds the teacher to phase-2 messages

    def __call__(self, config) -> RuleStrategy:
        rule = self.rule(**{kw: config_value(config, key) for kw, key in self.params.items()})
        strategy = in_shell(rule, _common(config), config_value(config, "weight-cap-factor"),
                            config_value(config, "update-norm-cap-factor"), self.shell)
        strategy.min_usable_replies = config.min_train_nodes  # counted after the reply checks, not before
        return strategy


FEDOPT = {"eta": "fedopt-eta", "beta_1": "fedopt-beta1", "beta_2": "fedopt-beta2", "tau": "fedopt-tau"}
MALICIOUS = {"num_malicious_nodes": "num-malicious-nodes"}

STRATEGIES: dict[str, StrategySpec] = {
    "fedavg": StrategySpec(WeightedMean),
    "ldawa": StrategySpec(LDAWA, {"warmup_rounds": "ldawa-warmup-rounds",
                                  "weighting": "ldawa-weighting",
                                  "normalise": "ldawa-normalise"}),
    "fedvssl": StrategySpec(FedVSSL, {"alpha": "fedvssl-alpha", "swa": "fedvssl-beta",
                                      "loss_reduction": "fedvssl-loss"}),
    "modality-wise": StrategySpec(MirrorRule, {"phase1_rounds": "mirror-phase1-rounds"}, MirrorStrategy),
    "creamfl": StrategySpec(CreamFLRule, {"public_size": "creamfl-public-size", "tau": "creamfl-tau",
                                          "regulariser_weight": "creamfl-regulariser-weight",
                                          "kd_weight": "creamfl-kd-weight"}, CreamFLStrategy),
    "fedprox": StrategySpec(WeightedMean, {"proximal_mu": "proximal-mu"}),
    "fedadam": StrategySpec(FedAdam, FEDOPT),
    "fedyogi": StrategySpec(FedYogi, FEDOPT),
    "fedadagrad": StrategySpec(FedAdagrad, {"eta": "fedopt-eta", "tau": "fedopt-tau"}),
    "fedavgm": StrategySpec(FedAvgM, {"server_learning_rate": "server-learning-rate",
                                      "server_momentum": "server-momentum"}),
    "fedmedian": StrategySpec(fedmedian),
    "fedtrimmedavg": StrategySpec(fedtrimmedavg, {"beta": "trimmed-beta"}),
    "krum": StrategySpec(krum, MALICIOUS),
    "multikrum": StrategySpec(multikrum, {**MALICIOUS, "num_nodes_to_select": "multikrum-select"}),
    "bulyan": StrategySpec(bulyan, MALICIOUS),
}

STRATEGY_KEYS = sorted({key for spec in STRATEGIES.values() for key in spec.params.values()})


def _spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown value {name!r}; valid: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def make_strategy(name: str, *, common: Mapping | None = None, weight_cap_factor: float = DEFAULT_FACTOR,
                  update_norm_cap_factor: float = DEFAULT_NORM_FACTOR, **params) -> RuleStrategy:
    """Strategy ``name`` with its own keyword parameters (e.g. ``proximal_mu=0.1``).

    ``common`` holds FedAvg's sampling arguments (``fraction_train``, ...).
    Unknown names or parameters raise ``ValueError`` listing the valid ones.
    Wrap the result with :func:`strategies.dp.wrap_dp` for a DP mode.
    """
    spec = _spec(name)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        valid = ", ".join(sorted(spec.params)) or "none"
        raise ValueError(f"strategy {name!r}: unknown parameter {unknown[0]!r}; valid: {valid}")
    common = {"train_metrics_aggr_fn": aggregate_train_metrics, **dict(common or {})}
    return in_shell(spec.rule(**params), common, weight_cap_factor, update_norm_cap_factor, spec.shell)


def unused_strategy_keys(config) -> list[str]:
    """Strategy keys set away from their defaults that the chosen strategy ignores."""
    defaults = RunConfig.keys()
    used = set(_spec(config.strategy).params.values())
    return [key for key in STRATEGY_KEYS
            if key not in used and config_value(config, key) != defaults[key]]


BYZANTINE = ("krum", "multikrum", "bulyan")


def inert_defences(config) -> list[str]:
    """One line for each robust strategy whose settings make it defend against nothing (a user who chose it
    by name expects it to)."""
    found = []
    if config.strategy in BYZANTINE and config.num_malicious_nodes == 0:
        found.append(f"{config.strategy} with num-malicious-nodes=0 tolerates no Byzantine client"
                     + (" (bulyan then averages every reply)" if config.strategy == "bulyan" else "")
                     + "; set num-malicious-nodes to the number of clients to tolerate")
    if config.strategy == "fedtrimmedavg":
        least = math.ceil(1 / config.trimmed_beta) if config.trimmed_beta > 0 else None
        if least is None or least > config.min_train_nodes:
            found.append(f"fedtrimmedavg with trimmed-beta {config.trimmed_beta:g} trims nothing from a round of "
                         + (f"fewer than {least} replies" if least else "any size")
                         + f" (min-train-nodes is {config.min_train_nodes})")
    return found


def build_strategy(config) -> RuleStrategy | DPAdapter:
    """The strategy named by ``config.strategy`` (validated by RunConfig), wrapped by its ``dp`` mode."""
    spec = _spec(config.strategy)
    ignored = unused_strategy_keys(config)
    if ignored:
        log(WARNING, "strategy %r ignores %s (it takes: %s)", config.strategy, ", ".join(ignored),
            ", ".join(sorted(spec.params.values())) or "none")
    for line in inert_defences(config):
        log(WARNING, "%s", line)
    return wrap_dp(spec(config), DPSettings.from_config(config), config.min_train_nodes)
