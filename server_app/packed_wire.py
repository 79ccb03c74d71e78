"""The packed wire format on the server (``wire-format='packed'``, :mod:`strategies.packed_arrays`).

Downlink: each train message's model goes out as one buffer per dtype (one packed copy per round, shared by
the messages that shared the record). Uplink: a packed reply is unpacked against the global model's names
and shapes before any reply check; one that does not unpack is left as it was sent, and the checks drop
and count it (its arrays are not the global model's).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Message

from server_app.compact_updates import transform_records
from strategies.packed_arrays import is_packed, pack, unpack


def pack_messages(messages: list[Message], key: str = "arrays") -> list[Message]:
    """The instructions with their ``key`` record packed (in place; returns them; one copy per shared record)."""
    return transform_records(messages, pack, key)


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
