"""Replies sent in float16 (``update-dtype='float16'``) widened back to the global model's dtypes.

A client that sends its float32 weights as float16 halves the bytes of every
reply. Only when the run asks for it does the server cast such arrays back,
before the reply checks (which then see the usual dtypes and still check
shapes, sizes and finiteness); an array is widened only when its metadata
says float16 with the global array's exact shape and its buffer is no larger
than that needs, so nothing is decoded that the checks would not have
refused to decode. Anything else is left as sent, for the checks to judge.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message

NPY_HEADER_MAX = 4096  # an .npy header of a plain array is far smaller


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
            try:
                values = array.numpy()
            except Exception:  # noqa: BLE001 - a malformed buffer stays as sent: the checks drop it
                return reply
            widened[name] = Array(values.astype(np.float32))
    if widened:
        reply.content.array_records[key] = ArrayRecord({name: widened.get(name, a) for name, a in sent.items()})
    return reply
