"""The ClientApp half of the client-side DP modes: clip the update before it leaves the client.

Install it on the ClientApp (``ClientApp(mods=[dp_clipping_mod])``). It acts
only on train messages whose config carries Flower's ``clipping_norm`` (sent
by the ``client-fixed`` and ``client-adaptive`` wrappers, see
:mod:`strategies.dp`) and passes every other message through untouched, so it
can stay installed whatever the run's ``dp`` mode.

It does what Flower's ``fixedclipping_mod`` / ``adaptiveclipping_mod`` do
(``reply = sent + clip(reply - sent)``; the ``norm_bit`` metric says whether
the update was clipped), with the project's float-only rule of
:mod:`strategies.dp_clip` (BatchNorm step counters neither count towards the
norm nor get scaled; a zero update stays as it is instead of dividing by
zero), and it passes evaluate messages through where Flower's mods answer
them with an error. ``norm_bit`` is always reported: the adaptive wrapper
needs it, and for the fixed one its mean is the fraction of clients clipped.
"""

from __future__ import annotations

from flwr.app import Context, Error, Message, MessageType
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from app_config.numbers import positive_number
from strategies.dp_clip import clip_update

MOD_ERROR_CODE = 0


def _clipping_norm(msg: Message) -> float | None:
    for record in msg.content.config_records.values():
        if KEY_CLIPPING_NORM in record:
            value = record[KEY_CLIPPING_NORM]
            return value if isinstance(value, (int, float)) else float("nan")  # refused by the caller
    return None


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=MOD_ERROR_CODE, reason=f"dp_clipping_mod: {reason}"), reply_to=msg)


def dp_clipping_mod(msg: Message, ctxt: Context, call_next) -> Message:
    if msg.has_error() or msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
        return call_next(msg, ctxt)
    norm = _clipping_norm(msg)
    if norm is None:
        return call_next(msg, ctxt)
    if positive_number(norm) is None:
        return _error(msg, f"{KEY_CLIPPING_NORM} must be a finite number > 0, got {norm!r}")
    if len(msg.content.array_records) != 1:
        return _error(msg, "the train message must hold one ArrayRecord")
    sent = next(iter(msg.content.array_records.values()))
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    if len(reply.content.array_records) != 1 or len(reply.content.metric_records) != 1:
        return _error(msg, "the reply must hold one ArrayRecord and one MetricRecord")
    (key, arrays), = reply.content.array_records.items()
    if list(arrays.keys()) != list(sent.keys()):
        return _error(msg, "the reply's array names differ from the ones received")
    try:
        reply.content[key], clipped = clip_update(arrays, sent, float(norm))
    except Exception as err:  # noqa: BLE001 - arrays of other shapes or dtypes: an error reply, not a crash
        return _error(msg, f"the reply's arrays cannot be clipped: {type(err).__name__}: {str(err)[:100]}")
    next(iter(reply.content.metric_records.values()))[KEY_NORM_BIT] = int(clipped)
    return reply
