"""Node sampling that repeats: each round draws from the strategy's own ``random.Random``.

Flower's ``FedAvg.configure_train`` / ``configure_evaluate`` sample the
round's nodes with the global ``random`` module, so whatever else touches it
changes who is sampled, and a resumed run could not sample as the
uninterrupted one did. :class:`SeededSampling` is FedAvg with those two
methods drawing from a ``random.Random`` seeded from ``(sampling_seed,
round)`` at the start of each round's ``configure_train`` (evaluation
sampling continues that round's draws). Placed last in a strategy's bases
(``class X(ReplyFilter, FedProx, SeededSampling)``), it is what the Flower
strategies' ``super().configure_train`` reaches, so their own additions
(FedProx's ``proximal-mu``, ...) stay Flower's. The draws equal those of the
earlier ``random.seed(round_seed(seed, round))`` before each round.

Set the seed with :func:`seed_node_sampling` (``server_app.round_loop.run_rounds``
does, from its ``seed`` argument); it reaches through DP wrappers to the
strategy they wrap.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import INFO
from time import sleep

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


def round_seed(seed: int, server_round: int) -> int:
    """The sampling seed of one round."""
    return (seed * 7_919 + server_round * 104_729) % (2**31)


class SeededSampling(FedAvg):
    """FedAvg whose node sampling draws from its own ``random.Random`` (seeded per round)."""

    sampling_seed: int = 0
    _sampling_rng: random.Random | None = None

    def seed_sampling(self, seed: int) -> None:
        """Draw the following rounds' nodes from ``seed`` (each round re-seeds from it and the round)."""
        self.sampling_seed = int(seed)
        self._sampling_rng = None

    def _sample(self, grid: Grid, sample_size: int) -> tuple[list[int], list[int]]:
        """Flower's ``sample_nodes`` (wait for ``min_available_nodes``, then sample) with this strategy's RNG."""
        min_available = max(self.min_available_nodes, sample_size)
        while len(all_nodes := list(grid.get_node_ids())) < min_available:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).", len(all_nodes),
                min_available)
            sleep(1)
        rng = self._sampling_rng if self._sampling_rng is not None else random.Random(self.sampling_seed)
        return rng.sample(all_nodes, sample_size), all_nodes

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                  fraction: float, min_nodes: int, message_type: str) -> Iterable[Message]:
        num_nodes = int(len(list(grid.get_node_ids())) * fraction)
        node_ids, all_nodes = self._sample(grid, max(num_nodes, min_nodes))
        log(INFO, "configure_%s: Sampled %s nodes (out of %s)", message_type, len(node_ids), len(all_nodes))
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        # One message per node carrying the same content, as Flower's FedAvg builds them (public API only).
        return [Message(content=record, message_type=message_type, dst_node_id=node) for node in node_ids]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.fraction_train == 0.0:
            return []
        self._sampling_rng = random.Random(round_seed(self.sampling_seed, server_round))
        return self._messages(server_round, arrays, config, grid, self.fraction_train, self.min_train_nodes,
                              MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        return self._messages(server_round, arrays, config, grid, self.fraction_evaluate, self.min_evaluate_nodes,
                              MessageType.EVALUATE)


def seed_node_sampling(strategy, seed: int) -> None:
    """Seed the node sampling of ``strategy`` (and of the strategy a DP wrapper wraps)."""
    while strategy is not None:
        if isinstance(strategy, SeededSampling):
            strategy.seed_sampling(seed)
        strategy = vars(strategy).get("strategy")
