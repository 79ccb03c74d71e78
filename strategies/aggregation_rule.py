"""What an aggregation rule is: a plain object that turns the round's checked client updates into a model.

A rule knows nothing of Flower's messages, sampling or reply checks: the strategy shell
(:class:`strategies.rule_strategy.RuleStrategy`) samples, screens the replies, caps their weights and
bounds their updates, then calls :meth:`AggregationRule.aggregate` with what survived. The rule owns its
server-side state (FedOpt's moments, FedAvgM's momentum) and gives it to the checkpoint through
``state_dict()`` / ``load_state_dict()``; a rule without state returns ``{}`` and refuses any other.

Rules are in :mod:`strategies.weighted_mean` (FedAvg; FedProx's server side), :mod:`strategies.ldawa`,
:mod:`strategies.fedvssl`, :mod:`strategies.server_optimisers` (FedAvgM, FedAdam, FedYogi, FedAdagrad) and
:mod:`strategies.flower_rules` (Flower's FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan, unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord

Scalar = int | float | str | bool  # a config value sent to the clients
MetricValue = int | float | list[int] | list[float]  # a MetricRecord value
RoundMetrics = dict[str, int | float]  # what a rule reports about its round
ModelArrays = dict[str, np.ndarray]


@dataclass
class ClientUpdate:
    """One checked reply: the client's model, its (capped) weight, its metrics and who sent it."""

    arrays: ArrayRecord
    weight: float
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)
    node_id: int = 0


class AggregationRule:
    """Base of every rule: no required metrics, no instruction values, no state."""

    name = "rule"
    required_metrics: tuple[str, ...] = ()  # metric keys every reply must carry (checked before aggregation)

    def instruction_config(self) -> dict[str, Scalar]:
        """Values the clients need each round beside the model (FedProx's ``proximal-mu``)."""
        return {}

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        """The new global model (None: keep the previous one) and the rule's own round metrics.

        ``global_model`` is the model sent this round (None only when nothing was sent, e.g. a benchmark
        aggregating replies it made itself). Raise ``FloatingPointError`` for a non-finite result and leave
        the state as it was."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line with the rule's settings, for the run's log."""
        return self.name

    def state_dict(self) -> dict:
        """The server-side state a resumed run must restore (arrays as numpy)."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`'s output; anything else is a one-line ValueError."""
        if state:
            raise ValueError(f"{self.name} keeps no state, got {sorted(map(str, state))[:3]}")


def as_numpy(record: ArrayRecord | Mapping[str, np.ndarray]) -> ModelArrays:
    """Name -> numpy array of a record (no copy for numpy input)."""
    return {name: (value.numpy() if isinstance(value, Array) else np.asarray(value))
            for name, value in record.items()}


def state_is_finite(value) -> bool:
    """Every float value of an arrays-like state is finite: an Array, an ndarray, an ArrayRecord, a dict or
    list of them; None and other values count as finite (the checkpoint applies the same test)."""
    if isinstance(value, Array):
        value = value.numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
    if isinstance(value, (ArrayRecord, dict)):
        return all(state_is_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(state_is_finite(v) for v in value)
    return True


def checked_arrays(state: Mapping, key: str, owner: str) -> ModelArrays | None:
    """``state[key]`` as named finite float arrays (None when absent), else a one-line ValueError."""
    if key not in state or state[key] is None:
        return None
    value = state[key]
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) and v.dtype.kind == "f" for k, v in value.items()):
        raise ValueError(f"{owner} state {key!r} must map array names to float arrays")
    if not state_is_finite(value):
        raise ValueError(f"{owner} state {key!r} holds NaN or Inf")
    return dict(value)


def refuse_unknown(state: Mapping, known: tuple[str, ...], owner: str) -> None:
    """A one-line ValueError for a state key ``owner`` does not keep."""
    unknown = sorted(str(k) for k in state if k not in known)
    if unknown:
        raise ValueError(f"{owner}: unknown state {unknown[0][:40]!r}; known: {', '.join(known) or 'none'}")
