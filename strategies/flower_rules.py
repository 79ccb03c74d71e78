"""Flower's coordinate-wise and Byzantine-robust strategies as rules, unchanged, behind one adapter.

FedMedian, FedTrimmedAvg, Krum, MultiKrum and Bulyan aggregate by their own selection rules, which Flower
implements and tests; :class:`FlowerAggregation` hands them the round's checked updates as the reply
messages they expect (each one ArrayRecord and one MetricRecord holding the capped weight) and returns
their aggregate. Only their ``aggregate_train`` is used: sampling, reply checks and the round loop are the
project's, so their other settings (fractions, minimum nodes) are never read. They keep no state between
rounds. When one returns no aggregate (Bulyan with fewer than ``4f + 3`` replies) the round keeps the
previous model.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Strategy

from strategies.aggregation_rule import AggregationRule, ClientUpdate, RoundMetrics

WEIGHT_KEY = "num-examples"


def as_reply(update: ClientUpdate) -> Message:
    """A train reply as Flower's strategies read it (a fresh record: FedMedian pops its arrays)."""
    content = RecordDict({"arrays": ArrayRecord(dict(update.arrays.items())),
                          "metrics": MetricRecord({WEIGHT_KEY: float(update.weight)})})
    return Message(content=content, dst_node_id=update.node_id, message_type=MessageType.TRAIN)


class FlowerAggregation(AggregationRule):
    """The aggregate of an unchanged Flower strategy over the round's checked updates."""

    def __init__(self, name: str, strategy: Strategy, settings: str = "") -> None:
        self.name, self.strategy, self.settings = name, strategy, settings

    def describe(self) -> str:
        return f"Flower {type(self.strategy).__name__}" + (f" ({self.settings})" if self.settings else "")

    def aggregate(self, server_round: int, global_model: ArrayRecord | None, updates: list[ClientUpdate]
                  ) -> tuple[ArrayRecord | None, RoundMetrics]:
        arrays, _ = self.strategy.aggregate_train(server_round, [as_reply(update) for update in updates])
        return arrays, {}


def fedmedian() -> FlowerAggregation:
    return FlowerAggregation("fedmedian", FedMedian())


def fedtrimmedavg(beta: float = 0.2) -> FlowerAggregation:
    return FlowerAggregation("fedtrimmedavg", FedTrimmedAvg(beta=beta), f"beta {beta:g}")


def krum(num_malicious_nodes: int = 0) -> FlowerAggregation:
    return FlowerAggregation("krum", Krum(num_malicious_nodes=num_malicious_nodes), f"f = {num_malicious_nodes}")


def multikrum(num_malicious_nodes: int = 0, num_nodes_to_select: int = 1) -> FlowerAggregation:
    return FlowerAggregation("multikrum", MultiKrum(num_malicious_nodes=num_malicious_nodes,
                                                    num_nodes_to_select=num_nodes_to_select),
                             f"f = {num_malicious_nodes}, select {num_nodes_to_select}")


def bulyan(num_malicious_nodes: int = 0) -> FlowerAggregation:
    return FlowerAggregation("bulyan", Bulyan(num_malicious_nodes=num_malicious_nodes), f"f = {num_malicious_nodes}")
