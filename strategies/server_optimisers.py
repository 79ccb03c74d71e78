"""Server optimisers on the round's pseudo-gradient: FedAvgM (Hsu et al. 2019) and FedAdam, FedYogi, FedAdagrad
(Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2), as plain rules.

With ``w`` the model sent this round and ``x`` the clients' weighted mean (FedAvg):

* FedAvgM: ``g = w - x``; with momentum ``beta > 0``, ``m = g`` in its first round, then ``m = beta m + g``, and
  ``g = m``; new model ``w - server_lr * g``. With ``server_lr = 1`` and ``beta = 0`` it is FedAvg.
* FedOpt: ``d = x - w``; ``m = beta_1 m + (1 - beta_1) d`` (``m`` starts at 0); the second moment ``v``
  (starting at 0) is
  FedAdagrad ``v + d^2``, FedAdam ``beta_2 v + (1 - beta_2) d^2``, FedYogi ``v - (1 - beta_2) d^2 sign(v - d^2)``;
  new model ``w + eta_t m / (sqrt(v) + tau)``, with ``eta_t = eta`` except for FedAdam, which (as Flower 1.41's
  ``FedAdam``, not the paper's Algorithm 2) bias-corrects ``eta_t = eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))``
  at round ``t``. FedAdagrad has no momentum (``beta_1 = 0``), as in Flower.

The formulas equal Flower's classes of the same names (a test runs both side by side); they are rules here so that
each owns its state, measures the update from the model actually sent (Flower's FedAvgM keeps its own copy, which
drifts from the global model whenever a round's aggregate is refused), and keeps that state in float64 (Flower's
float32 ``v`` became Inf from one extreme but finite reply and froze FedAdam for the rest of the run). A round that
would make the state or the model non-finite raises ``FloatingPointError`` and changes nothing: the round keeps
the previous model (``aggregation-nonfinite``) and the next one starts from the state before it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from strategies.aggregation_rule import (
    AggregationRule,
    ClientUpdate,
    ModelArrays,
    RoundMetrics,
    as_numpy,
    checked_arrays,
    refuse_unknown,
    state_is_finite,
)
from strategies.weighted_mean import weighted_mean

F64 = np.float64


def _sent_float64(global_model: ArrayRecord | None, name: str) -> ModelArrays:
    """The model sent this round, in float64 (the arithmetic's dtype), converted once per round."""
    if global_model is None:
        raise ValueError(f"{name} needs the global model sent this round")
    return {k: np.asarray(x.astype(F64)) for k, x in as_numpy(global_model).items()}


def _matching(state: ModelArrays | None, model: ModelArrays, name: str) -> None:
    """A restored state that does not fit the model is refused (a checkpoint of another architecture)."""
    if state is not None and {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in model.items()}:
        raise ValueError(f"{name}: the saved optimiser state does not match the model's arrays")


def _record(values: ModelArrays) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(x)) for name, x in values.items()})


def _finite_or_raise(name: str, *values) -> None:
    if not all(state_is_finite(v) for v in values):
        raise FloatingPointError(f"{name}: the round would make the server optimiser's state or the model "
                                 "non-finite; its state before the round is kept")


class FedAvgM(AggregationRule):
    """FedAvg followed by a server step with momentum on ``w - FedAvg``."""

    name = "fedavgm"

    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.0) -> None:
        self.server_learning_rate, self.server_momentum = float(server_learning_rate), float(server_momentum)
        self.momentum: ModelArrays | None = None

    def describe(self) -> str:
        return f"FedAvgM (server learning rate {self.server_learning_rate:g}, momentum {self.server_momentum:g})"

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        mean = weighted_mean(updates)
        if self.server_learning_rate == 1.0 and self.server_momentum == 0.0:
            return mean, {}  # no server step: FedAvg
        sent = _sent_float64(global_model, self.name)
        _matching(self.momentum, sent, self.name)
        step = {k: np.asarray(sent[k] - x.astype(F64)) for k, x in as_numpy(mean).items()}
        momentum = self.momentum
        if self.server_momentum > 0.0:
            momentum = step if momentum is None else {k: np.asarray(self.server_momentum * momentum[k] + g)
                                                      for k, g in step.items()}
            step = momentum
        new = {k: sent[k] - self.server_learning_rate * g for k, g in step.items()}
        _finite_or_raise(self.name, momentum, new)
        self.momentum = momentum
        return _record(new), {}

    def state_dict(self) -> dict:
        return {} if self.momentum is None else {"momentum": dict(self.momentum)}

    def load_state_dict(self, state: Mapping) -> None:
        refuse_unknown(state, ("momentum",), self.name)
        self.momentum = checked_arrays(state, "momentum", self.name)


class FedOpt(AggregationRule):
    """Adaptive server optimisers; subclasses give the second moment and the step size."""

    name = "fedopt"

    def __init__(self, eta: float = 1e-1, beta_1: float = 0.0, beta_2: float = 0.0, tau: float = 1e-3) -> None:
        self.eta, self.beta_1, self.beta_2, self.tau = float(eta), float(beta_1), float(beta_2), float(tau)
        self.m: ModelArrays | None = None
        self.v: ModelArrays | None = None

    def describe(self) -> str:
        return f"{type(self).__name__} (eta {self.eta:g}, beta_1 {self.beta_1:g}, beta_2 {self.beta_2:g}, " \
               f"tau {self.tau:g})"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step_size(self, server_round: int) -> float:
        return self.eta

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        mean = as_numpy(weighted_mean(updates))
        sent = _sent_float64(global_model, self.name)
        for state in (self.m, self.v):
            _matching(state, sent, self.name)
        delta = {k: np.asarray(x.astype(F64) - sent[k]) for k, x in mean.items()}
        m_before = self.m or {k: np.zeros_like(d) for k, d in delta.items()}
        v_before = self.v or {k: np.zeros_like(d) for k, d in delta.items()}
        m = {k: np.asarray(self.beta_1 * m_before[k] + (1 - self.beta_1) * d) for k, d in delta.items()}
        v = {k: np.asarray(self.second_moment(v_before[k], d * d)) for k, d in delta.items()}
        eta = self.step_size(server_round)
        new = {k: sent[k] + eta * m[k] / (np.sqrt(v[k]) + self.tau) for k in delta}
        _finite_or_raise(self.name, m, v, new)
        self.m, self.v = m, v
        return _record(new), {}

    def state_dict(self) -> dict:
        return {} if self.m is None else {"m": dict(self.m), "v": dict(self.v or {})}

    def load_state_dict(self, state: Mapping) -> None:
        refuse_unknown(state, ("m", "v"), self.name)
        m, v = checked_arrays(state, "m", self.name), checked_arrays(state, "v", self.name)
        if (m is None) != (v is None) or (m is not None and v is not None
                                          and {k: a.shape for k, a in m.items()} != {k: a.shape for k, a in v.items()}):
            raise ValueError(f"{self.name} state: m and v must hold the same arrays")
        self.m, self.v = m, v


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def __init__(self, eta: float = 1e-1, tau: float = 1e-3) -> None:
        super().__init__(eta=eta, beta_1=0.0, beta_2=0.0, tau=tau)

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v + d2


class FedAdam(FedOpt):
    name = "fedadam"

    def __init__(self, eta: float = 1e-1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau)

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * d2

    def step_size(self, server_round: int) -> float:
        t = server_round + 1.0
        return self.eta * float(np.sqrt(1 - self.beta_2 ** t)) / (1 - self.beta_1 ** t)


class FedYogi(FedOpt):
    name = "fedyogi"

    def __init__(self, eta: float = 1e-2, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        super().__init__(eta=eta, beta_1=beta_1, beta_2=beta_2, tau=tau)

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1 - self.beta_2) * d2 * np.sign(v - d2)
