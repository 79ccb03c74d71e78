"""The packed wire format on the server (``wire-format='packed'``, :mod:`strategies.packed_arrays`).

Downlink: each train message's model goes out as one buffer per dtype (one packed copy per round, shared by
the messages that shared the record). Uplink: a packed reply is unpacked against the global model's names
and shapes before any reply check; one that does not unpack is left as it was sent, and the checks drop
and count it (its arrays are not the global model's).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message

from strategies.packed_arrays import is_packed, pack, unpack


def pack_messages(messages: list[Message], key: str = "arrays") -> list[Message]:
    """The instructions with their ``key`` record packed (in place; returns them)."""
    done: dict[int, tuple[ArrayRecord, ArrayRecord]] = {}
    for message in messages:
        if message.has_error() or key not in message.content.array_records:
            continue
        record = message.content.array_records[key]
        if id(record) not in done:
            packed = pack(record)
            done[id(record)] = (record, packed)
            done[id(packed)] = (packed, packed)
        message.content.array_records[key] = done[id(record)][1]
    return messages


def unpack_reply(reply: Message, global_arrays: ArrayRecord, key: str = "arrays") -> Message:
    """``reply`` with its packed model unpacked when it matches the global model's layout (in place)."""
    if reply.has_error() or key not in reply.content.array_records:
        return reply
    record = reply.content.array_records[key]
    if is_packed(record):
        unpacked = unpack(record, global_arrays)
        if unpacked is not None:
            reply.content.array_records[key] = unpacked
    return reply
