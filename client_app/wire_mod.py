"""The packed wire format on the client (``wire-format='packed'``, :mod:`strategies.packed_arrays`).

The outermost ClientApp mod: a message whose model arrives packed is unpacked before anything else sees it
(the DP clipping mod and the train and evaluate functions work on the usual per-array record), and the
reply's model is packed again on the way out. A message that arrives per array goes through untouched.
"""

from __future__ import annotations

from flwr.app import Context, Error, Message

from strategies.packed_arrays import is_packed, pack, unpack

MOD_ERROR_CODE = 0


def wire_mod(msg: Message, ctxt: Context, call_next) -> Message:
    if msg.has_error():
        return call_next(msg, ctxt)
    keys = [key for key, record in msg.content.array_records.items() if is_packed(record)]
    for key in keys:
        unpacked = unpack(msg.content.array_records[key])
        if unpacked is None:
            return Message(Error(code=MOD_ERROR_CODE, reason=f"wire_mod: the packed record {key!r} does not "
                                                             "unpack"), reply_to=msg)
        msg.content[key] = unpacked
    reply = call_next(msg, ctxt)
    if keys and not reply.has_error():
        for key in list(reply.content.array_records):
            reply.content[key] = pack(reply.content.array_records[key])
    return reply
