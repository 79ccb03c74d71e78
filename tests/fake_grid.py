"""Helpers to drive strategies without a SuperLink (tests, benchmarks).

``task_identity()`` sets the process identity Flower needs to create
instruction messages outside a ServerApp; ``FakeGrid`` answers
``send_and_receive`` with a Python function per node; ``train_reply`` and
``error_reply`` build client replies by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

IDENTITY = ("run_id", "node_id", "task_id")


def _current(name: str) -> int | None:
    try:
        return getattr(TaskIdentity, name)
    except RuntimeError:  # not set in this process
        return None


@contextmanager
def task_identity(run_id: int = 1, node_id: int = 0, task_id: int = 1) -> Iterator[None]:
    saved = {name: _current(name) for name in IDENTITY}
    for name, value in zip(IDENTITY, (run_id, node_id, task_id)):
        setattr(TaskIdentity, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(TaskIdentity, name, value)  # None again where it was unset


# What the ClientApp reports per modality beside ``loss`` (FedVSSL weighs clients by these losses).
PER_MODALITY = {"loss-image": 1.0, "loss-audio": 1.5, "num-image-examples": 5.0, "num-audio-examples": 5.0}


def arrays_of(values: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def numpy_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def instruction(node_id: int = 1, arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"arrays": arrays or ArrayRecord(), "config": ConfigRecord({"server-round": 1})})
    return Message(content=content, dst_node_id=node_id, message_type="train")


def train_reply(to: Message, weights: Mapping[str, np.ndarray] | None, metrics: Mapping | None = None,
                num_examples: float | None = 10.0, extra: Mapping | None = None) -> Message:
    """A train reply holding ``weights`` (as ``arrays``) and ``metrics`` (+ ``num-examples``), over the
    per-modality losses and counts every ClientApp reply carries (:data:`PER_MODALITY`)."""
    record = {}
    if weights is not None:
        record["arrays"] = arrays_of(weights)
    if metrics is not None or num_examples is not None:
        values = {**PER_MODALITY, **dict(metrics or {"loss": 1.0})}
        if num_examples is not None:
            values["num-examples"] = num_examples
        record["metrics"] = MetricRecord(values)
    record.update(extra or {})
    return Message(content=RecordDict(record), reply_to=to)


def error_reply(to: Message, reason: str = "ClientApp raised") -> Message:
    return Message(error=Error(code=0, reason=reason), reply_to=to)


class FakeGrid:
    """``get_node_ids`` and ``send_and_receive`` answering with ``respond(msg) -> reply``."""

    def __init__(self, node_ids: Iterable[int], respond: Callable[[Message], Message]) -> None:
        self.node_ids = list(node_ids)
        self.respond = respond
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = sorted(messages, key=lambda m: m.metadata.dst_node_id)
        self.sent.extend(messages)
        return [self.respond(m) for m in messages]
