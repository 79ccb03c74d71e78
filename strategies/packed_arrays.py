"""The model on the wire as one contiguous buffer per dtype (``wire-format='packed'``).

Flower sends every array of an ArrayRecord as its own object (an ``Array`` plus its chunks, each pushed and
pulled with its own request): the default encoder's state dict is about 120 arrays, so a message is a few
hundred objects. Packed, the same record is three arrays: ``wire-float32`` and ``wire-int64`` (every array
of that dtype, raveled and concatenated in the record's order) and ``wire-layout``, a small uint8 array
holding the JSON list ``[[name, dtype, shape], ...]`` that says how to cut them apart again.

Unpacking trusts nothing: the layout must be a bounded JSON list of unique names, known numeric dtypes and
non-negative shapes; each buffer must be a plain little-endian 1-D .npy payload of exactly the elements the
layout gives it (read with the reply checks' own ``decode_checked``, so nothing is allocated that they would
refuse), and no other key may be present. The server also requires a reply's names and shapes to be the
global model's, in its order. A record that does not unpack is left as it was sent, so the reply checks drop
and count it like any malformed reply. Both sides pack and unpack in ``client_app.wire_mod`` and
``server_app.round_loop``; ``wire-format='arrays'`` keeps Flower's per-array form.
"""

from __future__ import annotations

import json
import math

import numpy as np
from flwr.app import Array, ArrayRecord

from strategies.reply_check import decode_checked

LAYOUT = "wire-layout"
PREFIX = "wire-"
DTYPES = ("float16", "float32", "float64", "int64", "int32", "uint8", "bool")
MAX_LAYOUT_BYTES = 1 << 20  # a state dict of 10,000 arrays needs about half of it
MAX_ARRAYS = 10_000


def is_packed(record: ArrayRecord) -> bool:
    return LAYOUT in record


def pack(record: ArrayRecord) -> ArrayRecord:
    """``record`` as one 1-D buffer per dtype plus its layout (record order kept)."""
    layout: list[list] = []
    groups: dict[str, list[np.ndarray]] = {}
    for name, array in record.items():
        values = array.numpy()
        dtype = str(values.dtype)
        if dtype not in DTYPES:
            raise ValueError(f"array {name!r}: dtype {dtype} cannot be packed")
        layout.append([name, dtype, list(values.shape)])
        groups.setdefault(dtype, []).append(values.ravel())
    header = np.frombuffer(json.dumps(layout, separators=(",", ":")).encode(), dtype=np.uint8)
    out = ArrayRecord({LAYOUT: Array(np.ascontiguousarray(header))})
    for dtype, parts in groups.items():
        out[PREFIX + dtype] = Array(np.concatenate(parts) if parts else np.zeros(0, dtype))
    return out


def _layout(record: ArrayRecord) -> list[tuple[str, str, tuple[int, ...]]] | None:
    header = record[LAYOUT]
    if str(header.dtype) != "uint8" or len(header.shape) != 1 or not 0 < header.shape[0] <= MAX_LAYOUT_BYTES:
        return None
    raw, refused = decode_checked(header, tuple(header.shape), "uint8", LAYOUT)
    if raw is None or refused is not None:
        return None
    try:
        entries = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(entries, list) or not 0 < len(entries) <= MAX_ARRAYS:
        return None
    layout = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and entry[1] in DTYPES
                and isinstance(entry[2], list) and len(entry[2]) <= 8
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in entry[2])):
            return None
        layout.append((entry[0], entry[1], tuple(entry[2])))
    if len({name for name, _, _ in layout}) != len(layout):
        return None
    return layout


def unpack(record: ArrayRecord, expected: ArrayRecord | None = None) -> ArrayRecord | None:
    """The per-array record a packed one describes, or None when it is not a well-formed packed record (or,
    with ``expected``, when its names and shapes are not ``expected``'s, in order)."""
    if not is_packed(record):
        return None
    layout = _layout(record)
    if layout is None:
        return None
    if expected is not None and [(n, s) for n, _, s in layout] != [(n, tuple(a.shape)) for n, a in expected.items()]:
        return None
    sizes: dict[str, int] = {}
    for _, dtype, shape in layout:
        sizes[dtype] = sizes.get(dtype, 0) + math.prod(shape)
    if set(record.keys()) != {LAYOUT, *(PREFIX + d for d in sizes)}:
        return None
    buffers = {}
    for dtype, size in sizes.items():
        values, refused = decode_checked(record[PREFIX + dtype], (size,), dtype, PREFIX + dtype)
        if values is None or refused is not None:
            return None
        buffers[dtype] = values
    out, offsets = ArrayRecord(), dict.fromkeys(sizes, 0)
    for name, dtype, shape in layout:
        start = offsets[dtype]
        offsets[dtype] = start + math.prod(shape)
        out[name] = Array(buffers[dtype][start:offsets[dtype]].reshape(shape).copy())  # copy keeps 0-d arrays 0-d
    return out
