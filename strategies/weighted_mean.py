"""FedAvg (McMahan et al. 2017) as a rule: ``sum_k n_k w_k / sum_k n_k``, streamed; FedProx's server side.

FedProx (Li et al. 2020) changes only the clients' objective (``+ mu/2 ||w - w_global||^2``); its server
averages as FedAvg does and sends ``proximal-mu`` with each instruction, under the key Flower's FedProx
uses, which the ClientApp reads (``client_app.proximal``).
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from strategies.aggregation_rule import AggregationRule, ClientUpdate, RoundMetrics, Scalar
from strategies.streaming import streaming_weighted_mean

PROXIMAL_MU = "proximal-mu"


def weighted_mean(updates: list[ClientUpdate]) -> ArrayRecord:
    """The updates' weighted mean in one pass (each array back in its own dtype)."""
    return streaming_weighted_mean((update.arrays, update.weight) for update in updates)


class WeightedMean(AggregationRule):
    """FedAvg; with ``proximal_mu`` set, FedProx (the same mean, ``proximal-mu`` sent to the clients)."""

    def __init__(self, proximal_mu: float | None = None) -> None:
        if proximal_mu is not None and not proximal_mu >= 0:
            raise ValueError(f"proximal-mu: must be >= 0, got {proximal_mu!r}")
        self.proximal_mu = proximal_mu
        self.name = "fedavg" if proximal_mu is None else "fedprox"

    def instruction_config(self) -> dict[str, Scalar]:
        return {} if self.proximal_mu is None else {PROXIMAL_MU: float(self.proximal_mu)}

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        return weighted_mean(updates), {}

    def describe(self) -> str:
        return "FedAvg" if self.proximal_mu is None else f"FedProx (proximal-mu {self.proximal_mu:g})"
