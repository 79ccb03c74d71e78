"""What a train reply may hold: exactly what the global model expects, and nothing else.

A client is not trusted: every value in its reply is checked against the
global model it was sent (names, shapes, dtypes, byte sizes) and against what
honest clients send (``client_app/app.py``: one ArrayRecord, one MetricRecord
of numbers, the ``client-info`` ConfigRecord of ``client_app/worker_info.py``).
:func:`classify_reply` returns ``(category, reason)`` for a reply to drop, or
None. It never raises, whatever the reply holds. Categories:

=============== ===============================================================
``failed``      the reply carries an error (the ClientApp raised, ...)
``metrics``     not exactly one MetricRecord; more than ``MAX_METRICS`` keys or a
                key longer than ``MAX_KEY_LENGTH``; a value that is not a finite
                int/float within ``+-METRIC_ABS_MAX`` (lists, strings, bytes,
                NaN, Inf); the weight (``num-examples``) missing, <= 0 or above
                ``MAX_NUM_EXAMPLES``; a metric the strategy requires missing
``client-info`` a ConfigRecord other than ``client-info``; a ``client-info`` key
                honest clients do not send; a value of the wrong type, out of
                range or a string longer than its cap
``shape``       not exactly one ArrayRecord; array names or shapes differing
                from the global model's
``dtype``       an array's dtype (its metadata or its npy header) differing from
                the global model's: no float64, complex, bool, float16 or int32
                stand-ins for a float32 layer
``size``        an array's bytes not exactly one npy header plus
                ``shape x itemsize`` bytes (padding, truncation, an unreadable
                header or an unknown serialisation)
``nonfinite``   a float array holding NaN or Inf, or an integer array holding a
                value beyond ``+-2**53`` (not exact in a float64 accumulator)
=============== ===============================================================

Arrays are decoded without copies (``numpy.frombuffer`` on the checked bytes),
one at a time, so a check holds at most one layer's temporaries in memory, and
nothing is decoded before its names, shape and dtype have been matched against
the global model (a reply cannot make the server allocate what it claims).
"""

from __future__ import annotations

import io
import math

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from app_config.modalities import CLIENT_KINDS
from app_config.numbers import real_number

FAILED, METRICS, CLIENT_INFO, SHAPE, DTYPE, SIZE, NONFINITE = (
    "failed", "metrics", "client-info", "shape", "dtype", "size", "nonfinite")
CATEGORIES = (FAILED, METRICS, CLIENT_INFO, SHAPE, DTYPE, SIZE, NONFINITE)

MAX_NUM_EXAMPLES = 1e12  # no data set a client trains on per round is larger
METRIC_ABS_MAX = 1e15
MAX_METRICS = 64
MAX_KEY_LENGTH = 64
INT_ABS_MAX = 2**53
NUMPY_STYPE = "numpy.ndarray"
ARRAYS_KEY = "arrays"  # the name Flower's strategies give the model's ArrayRecord (arrayrecord_key)

INFO_KEY = "client-info"
# What client_app/worker_info.py sends: key -> (type, check of the value, what the check wants).
CLIENT_INFO_FIELDS = {
    "partition-id": (int, lambda v: 0 <= v < 2**31, "an int in [0, 2**31)"),
    "pid": (int, lambda v: 0 <= v < 2**31, "an int in [0, 2**31)"),
    "kind": (str, lambda v: v in CLIENT_KINDS, f"one of {', '.join(CLIENT_KINDS)}"),
    "host": (str, lambda v: 0 < len(v) <= 255, "a host name of 1-255 characters"),
    "ray-node-id": (str, lambda v: 0 < len(v) <= 128, "a Ray node id of 1-128 characters"),
    "device": (str, lambda v: 0 < len(v) <= 32, "a torch device type of 1-32 characters"),
}

Spec = dict[str, tuple[tuple[int, ...], str]]
Verdict = tuple[str, str] | None


def array_spec(arrays: ArrayRecord) -> Spec:
    """Name -> (shape, dtype) from an ArrayRecord's metadata (no deserialisation)."""
    return {name: (tuple(a.shape), str(a.dtype)) for name, a in arrays.items()}


def finite_number(value, limit: float = METRIC_ABS_MAX) -> bool:
    """An int or float (not a bool), finite and within ``+-limit``."""
    return real_number(value, limit=limit) is not None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_metrics(msg: Message, weighted_by_key: str, required: tuple[str, ...] = ()) -> str | None:
    """Why the reply's MetricRecord cannot be used, or None."""
    records = msg.content.metric_records
    if len(records) != 1:
        return f"expected one MetricRecord, got {len(records)}"
    metrics = next(iter(records.values()))
    if len(metrics) > MAX_METRICS:
        return f"{len(metrics)} metrics, more than {MAX_METRICS}"
    if weighted_by_key not in metrics:
        return f"MetricRecord lacks {weighted_by_key!r}"
    for key in required:
        if key not in metrics:
            return f"MetricRecord lacks {key!r}"
    for key, value in metrics.items():
        if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
            return f"metric key {_short(key)} is not a string of at most {MAX_KEY_LENGTH} characters"
        if not finite_number(value):
            return f"metric {key!r} must be a finite number within +-{METRIC_ABS_MAX:g}, got {_short(value)}"
    weight = metrics[weighted_by_key]
    if not 0 < (real_number(weight) or 0.0) <= MAX_NUM_EXAMPLES:
        return f"{weighted_by_key!r} must be in (0, {MAX_NUM_EXAMPLES:g}], got {weight!r}"
    return None


def check_client_info(msg: Message) -> str | None:
    """Why the reply's ConfigRecords are not what honest clients send, or None."""
    for name, record in msg.content.config_records.items():
        if name != INFO_KEY:
            return f"unexpected ConfigRecord {_short(name)}"
        if not isinstance(record, ConfigRecord):
            return f"{INFO_KEY} is not a ConfigRecord"
        for key, value in record.items():
            field = CLIENT_INFO_FIELDS.get(key)
            if field is None:
                return f"{INFO_KEY} has unknown key {_short(key)}"
            kind, ok, wanted = field
            if not isinstance(value, kind) or isinstance(value, bool) or not ok(value):
                return f"{INFO_KEY} {key!r} must be {wanted}, got {_short(value)}"
    return None


def _header(data: bytes) -> tuple[int, tuple, bool, np.dtype]:
    """(header length, shape, fortran order, dtype) of npy bytes; raises on anything else."""
    fh = io.BytesIO(data)
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"npy format version {version} is not accepted")
    return fh.tell(), tuple(shape), bool(fortran), dtype


def decode_checked(array, shape: tuple[int, ...], dtype: str, name: str) -> tuple[np.ndarray | None, Verdict]:
    """``(values, None)`` for an Array that is exactly ``shape`` x ``dtype``, else ``(None, verdict)``.

    The values are a read-only view of the Array's bytes (no copy).
    """
    if str(array.dtype) != dtype:
        return None, (DTYPE, f"array {name!r} has dtype {_short(array.dtype)}, the global model {dtype}")
    if tuple(array.shape) != shape:
        return None, (SHAPE, f"array {name!r} has shape {_short(tuple(array.shape))}, the global model {shape}")
    if array.stype != NUMPY_STYPE or not isinstance(array.data, bytes):
        return None, (SIZE, f"array {name!r} has serialisation {_short(array.stype)}, not {NUMPY_STYPE}")
    try:
        offset, got_shape, fortran, got_dtype = _header(array.data)
    except Exception as err:  # noqa: BLE001 - any malformed header is one reason
        return None, (SIZE, f"array {name!r} cannot be read: {str(err)[:80]}")
    want = np.dtype(dtype)
    if got_dtype != want:
        return None, (DTYPE, f"array {name!r} holds {got_dtype} data, the global model {dtype}")
    if got_shape != shape:
        return None, (SHAPE, f"array {name!r} holds data of shape {got_shape}, the global model {shape}")
    count = math.prod(shape)
    if len(array.data) - offset != count * want.itemsize:
        return None, (SIZE, f"array {name!r} has {len(array.data) - offset} data bytes, "
                            f"shape x itemsize is {count * want.itemsize}")
    values = np.frombuffer(array.data, dtype=want, count=count, offset=offset)
    return values.reshape(shape, order="F" if fortran else "C"), None


def check_values(values: np.ndarray, name: str) -> Verdict:
    """NaN/Inf in a float array, or integers an float64 accumulator cannot hold exactly."""
    kind = values.dtype.kind
    if kind in "fc" and not np.isfinite(values).all():
        return NONFINITE, f"array {name!r} holds NaN or Inf"
    if kind in "iu" and values.size and (values.max() > INT_ABS_MAX or (kind == "i" and values.min() < -INT_ABS_MAX)):
        return NONFINITE, f"array {name!r} holds integers beyond +-2**53"
    return None


def check_arrays(msg: Message, spec: Spec | None) -> Verdict:
    """``(category, reason)`` if the reply's arrays are not what ``spec`` expects, else None."""
    records = msg.content.array_records
    if len(records) != 1:
        return SHAPE, f"expected one ArrayRecord, got {len(records)}"
    if ARRAYS_KEY not in records:  # Flower's strategies read the reply's record by this name
        return SHAPE, f"the ArrayRecord is named {_short(next(iter(records.keys())))}, not {ARRAYS_KEY!r}"
    arrays = records[ARRAYS_KEY]
    if spec is None:
        spec = array_spec(arrays)
    if set(arrays.keys()) != set(spec):
        missing, extra = sorted(set(spec) - set(arrays.keys())), sorted(set(arrays.keys()) - set(spec))
        return SHAPE, f"array names differ from the global model (missing {missing[:3]}, extra {_short(extra[:3])})"
    for name, array in arrays.items():
        shape, dtype = spec[name]
        values, verdict = decode_checked(array, shape, dtype, name)
        if verdict is None and values is not None:
            verdict = check_values(values, name)
        if verdict is not None:
            return verdict
    return None


def classify_reply(msg: Message, spec: Spec | None, weighted_by_key: str = "num-examples",
                   required_metrics: tuple[str, ...] = ()) -> Verdict:
    """``(category, reason)`` for a reply to drop, None for one to aggregate. Never raises."""
    try:
        if msg.has_error():
            return FAILED, f"error reply: {_short(msg.error.reason)}"
        reason = check_metrics(msg, weighted_by_key, required_metrics)
        if reason is not None:
            return METRICS, reason
        reason = check_client_info(msg)
        if reason is not None:
            return CLIENT_INFO, reason
        return check_arrays(msg, spec)
    except Exception as err:  # noqa: BLE001 - a reply no check foresaw is still just a bad reply
        return SHAPE, f"reply cannot be read: {type(err).__name__}: {str(err)[:80]}"
