"""Each round's replies are freed when the round ends, also when they sit in reference cycles."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from server_app import round_loop
from strategies.registry import make_strategy
from tests.fake_grid import FakeGrid, arrays_of, numpy_of, task_identity, train_reply

COMMON = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 2, "min_evaluate_nodes": 0,
          "min_available_nodes": 2}


class _Payload:
    """A large buffer caught in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.buffer = np.zeros(1_000_000, np.float32)
        self.me = self


def test_the_cyclic_garbage_of_every_round_is_collected_when_the_round_ends(monkeypatch):
    alive: list[weakref.ref] = []
    per_round: list[int] = []

    def respond(msg):
        payload = _Payload()
        alive.append(weakref.ref(payload))
        reply = train_reply(msg, {k: v + 1 for k, v in numpy_of(msg.content["arrays"]).items()})
        payload.reply = reply  # the reply's garbage now needs the cyclic collector
        return reply

    def write_checkpoint(server_round, _arrays):
        per_round.append(sum(ref() is not None for ref in alive))  # this round's payloads, still referenced

    gc.disable()  # only the round loop's own collection may free the cycles
    try:
        with task_identity():
            round_loop.run_rounds(make_strategy("fedavg", common=COMMON), FakeGrid([1, 2, 3], respond),
                                  arrays_of({"w": np.zeros((4, 4), np.float32)}), num_rounds=3,
                                  write_checkpoint=write_checkpoint)
        assert sum(ref() is not None for ref in alive) == 0  # the last round's too
    finally:
        gc.enable()
    assert len(alive) == 9 and per_round == [3, 3, 3]  # never more than one round's payloads at once
