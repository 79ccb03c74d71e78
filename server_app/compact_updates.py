"""Model updates in float16 both ways (``update-dtype='float16'``): half the bytes of a round.

Downlink: :func:`narrow_messages` sends the global model's float32 arrays as
float16 to the clients sampled for training (one copy per round, shared by
their messages; client-side evaluation, off by default, gets float32). The
strategy itself configured the round with the float32 model, so its own state
(FedOpt's current weights, L-DAWA's reference, the reply checks' expected
dtypes) stays float32. An array whose values do not fit float16 (a finite
value beyond 65504) is sent as float32 instead.

Uplink: a client that sends its float32 weights as float16 halves the bytes of every
reply. Only when the run asks for it does the server cast such arrays back,
before the reply checks (which then see the usual dtypes and still check
shapes, sizes and finiteness); an array is widened only when its metadata
says float16 with the global array's exact shape and its buffer is an .npy
1.0 / 2.0 payload whose own header says little-endian float16, C order, that
same shape and exactly the bytes it needs (the reply checks' own
:func:`strategies.reply_check.decode_checked`: numpy's header reader, the
values viewed in place), so nothing is decoded or
allocated that the checks would not have refused. Anything else (a string,
void or structured payload under float16 metadata, float64, big-endian,
npy 3.0, a header claiming 10**9 values) is left as sent, for the checks to
drop and count.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from strategies.half_precision import narrow_arrays
from strategies.reply_check import decode_checked

NPY_HEADER_MAX = 4096  # an .npy header of a plain array is far smaller


def transform_records(messages: list[Message], transform, key: str = "arrays") -> list[Message]:
    """Each message's ``key`` record replaced by ``transform(record)`` (None: left as it is), in place.

    Flower's strategies send one record to every node: messages that share a record share one transformed
    copy, made once."""
    done: dict[int, tuple[ArrayRecord, ArrayRecord | None]] = {}  # id -> (record kept alive, its copy)
    for message in messages:
        if message.has_error() or key not in message.content.array_records:
            continue
        record = message.content.array_records[key]
        if id(record) not in done:
            copy = transform(record)
            done[id(record)] = (record, copy)
            if copy is not None:
                done[id(copy)] = (copy, copy)  # a record shared by several messages: already transformed
        copy = done[id(record)][1]
        if copy is not None:
            message.content.array_records[key] = copy
    return messages


def narrow_messages(messages: list[Message], global_arrays: ArrayRecord, key: str = "arrays") -> list[Message]:
    """Instructions whose copy of ``global_arrays`` goes out as float16 (in place; returns them).

    Only a record holding the global model's arrays (same names and shapes) is narrowed:
    a strategy sending anything else under ``key`` sends it as it is.
    """
    layout = {name: tuple(a.shape) for name, a in global_arrays.items()}

    def narrowed(record: ArrayRecord) -> ArrayRecord | None:
        if {name: tuple(a.shape) for name, a in record.items()} != layout:
            return None
        return narrow_arrays(record)

    return transform_records(messages, narrowed, key)


def widen_reply(reply: Message, global_arrays: ArrayRecord, key: str = "arrays") -> Message:
    """``reply`` with its float16 arrays cast to the global model's float32 (in place; returns it)."""
    if reply.has_error() or key not in reply.content.array_records:
        return reply
    sent = reply.content.array_records[key]
    widened = {}
    for name, array in sent.items():
        target = global_arrays.get(name)
        if (target is not None and array.dtype == "float16" and target.dtype == "float32"
                and tuple(array.shape) == tuple(target.shape)
                and len(array.data) <= 2 * int(np.prod(target.shape)) + NPY_HEADER_MAX):
            values, refused = decode_checked(array, tuple(target.shape), "float16", name)
            if values is None or refused is not None:  # not a plain float16 array of that shape: left as sent
                return reply
            widened[name] = Array(values.astype(np.float32))
    if widened:
        reply.content.array_records[key] = ArrayRecord({name: widened.get(name, a) for name, a in sent.items()})
    return reply
