"""The one Flower strategy the project runs: seeded sampling, reply screening, then an aggregation rule.

``RuleStrategy(rule)`` is a Flower ``Strategy`` (the round loop and Flower's DP wrappers drive it through
``configure_train`` / ``aggregate_train``) whose parts each live in one module:

* ``configure_train``: the rule's instruction values (FedProx's ``proximal-mu``) are added to the round's
  config; :class:`~strategies.seeded_sampling.SeededSampling` samples the nodes from the run's seed;
* ``aggregate_train``: :class:`~strategies.reply_filter.ReplyFilter` drops and counts bad replies, caps
  their weights and bounds their updates, then :meth:`RuleStrategy.aggregate_screened` hands the survivors
  to ``rule.aggregate`` as :class:`~strategies.aggregation_rule.ClientUpdate` objects; the filter casts
  the result back to the model's dtypes and refuses a non-finite one;
* ``state_dict`` / ``load_state_dict``: the rule's state, for the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid

from strategies.aggregation_rule import AggregationRule, ClientUpdate
from strategies.reply_filter import ReplyFilter
from strategies.seeded_sampling import SeededSampling
from strategies.streaming import reply_arrays, reply_weight


def as_update(copy: Message, weighted_by_key: str) -> ClientUpdate:
    """A screened copy as the rule sees it: arrays, capped weight, carried metrics, sender."""
    metrics = next(iter(copy.content.metric_records.values()))
    return ClientUpdate(reply_arrays(copy.content), reply_weight(copy.content, weighted_by_key),
                        dict(metrics.items()), copy.metadata.src_node_id)


class RuleStrategy(ReplyFilter, SeededSampling):
    """Seeded sampling and reply screening around one :class:`AggregationRule`."""

    def __init__(self, rule: AggregationRule, **sampling) -> None:
        super().__init__(**sampling)  # FedAvg's sampling arguments (fraction_train, min_train_nodes, ...)
        self.rule = rule
        self.required_metrics = rule.required_metrics

    def __repr__(self) -> str:
        return f"RuleStrategy({self.rule.describe()})"

    def summary(self) -> None:
        log(INFO, "\t├──> aggregation: %s", self.rule.describe())
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        for key, value in self.rule.instruction_config().items():
            config[key] = value
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_screened(self, server_round: int, copies: list[Message]
                           ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates = [as_update(copy, self.weighted_by_key) for copy in copies]
        arrays, metrics = self.rule.aggregate(server_round, self._reference, updates)
        return arrays, MetricRecord(dict(metrics))

    def state_dict(self) -> dict:
        return self.rule.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.rule.load_state_dict(state)
