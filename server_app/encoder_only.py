"""FASSL's backbone-only transmission, server side (``send-encoder-only``): the strategy aggregates, and the
round sends, only the encoder's arrays; what the run records (central evaluation, checkpoints, saved models)
is the whole model, with the server's fixed head (the seeded initial one; each client keeps its own,
``client_app.partial_update``). Off, every function here returns what it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Result

from models.ssl_model import encoder_part, head_part

Returned = TypeVar("Returned")


class ModelParts:
    """What travels (the encoder) and what the run files hold (encoder + the server's head)."""

    def __init__(self, encoder_only: bool, model: ArrayRecord) -> None:
        self.encoder_only = encoder_only
        self.head = ArrayRecord(head_part(model))

    def sent(self, arrays: ArrayRecord) -> ArrayRecord:
        if not self.encoder_only:
            return arrays
        return ArrayRecord(encoder_part(arrays))

    def whole(self, arrays: ArrayRecord) -> ArrayRecord:
        if not self.encoder_only or not len(arrays):
            return arrays
        return ArrayRecord({**dict(arrays.items()), **dict(self.head.items())})

    def on_whole(self, hook: Callable[[int, ArrayRecord], Returned]) -> Callable[[int, ArrayRecord], Returned]:
        """``hook`` called with the whole model instead of the transmitted part."""
        if not self.encoder_only:
            return hook
        return lambda server_round, arrays: hook(server_round, self.whole(arrays))

    def whole_result(self, result: Result) -> Result:
        result.arrays = self.whole(result.arrays)
        return result
