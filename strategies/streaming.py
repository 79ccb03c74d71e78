"""Streaming aggregation: one accumulator plus one reply at a time.

Flower's ``aggregate_arrayrecords`` keeps a full-model accumulator and then
builds the output record beside it (two model copies at the peak), and it walks
the replies twice (once for the weights, once for the sum), so it needs them
all in memory. The helpers here walk the replies once, in order, and only need
them one at a time:

* the working memory is one float64 accumulator the size of the model plus one
  float64 layer of the reply being added. Flower accumulates in each layer's
  own dtype; float64 cannot overflow here (the reply filter admits only the
  global model's dtypes, finite values and capped weights: at most
  ``1e12 x 3.4e38`` per float32 term), and the result is checked finite;
* the output record is built layer by layer while the accumulator's layer is
  released, so the peak stays near one model copy;
* they accept any iterable, including a generator producing replies on demand
  (see ``benchmarks/bench_aggregation.py``).

Each reply is given as ``(ArrayRecord, weight)``; the result is
``sum_k weight_k * x_k / sum_k weight_k`` per array, cast back to the array's
dtype (integers rounded and clipped to their range).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from app_config.numbers import real_number

ACCUMULATOR = np.dtype(np.float64)


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as ``dtype``; integer and bool targets are rounded and clipped to their range first.

    Float targets are cast as they are: a value beyond the target's range
    becomes Inf, which the caller's finiteness check then sees.
    """
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values
    if dtype == np.bool_:
        return np.rint(values) != 0
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # float64 cannot hold int64's extremes exactly: stay strictly inside them.
        low, high = np.nextafter(float(info.min), 0.0), np.nextafter(float(info.max), 0.0)
        values = np.clip(np.nan_to_num(np.rint(values), nan=0.0), low, high)
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def reply_arrays(content: RecordDict) -> ArrayRecord:
    """The (single) ArrayRecord of a train reply, whatever its key."""
    return next(iter(content.array_records.values()))


def reply_weight(content: RecordDict, key: str) -> float:
    """The weighting value (e.g. ``num-examples``) of a train reply's single MetricRecord."""
    return real_number(next(iter(content.metric_records.values()))[key]) or 0.0  # checked by the reply filter


def weighted_pairs(replies: Iterable[Message | RecordDict], key: str) -> Iterator[tuple[ArrayRecord, float]]:
    """``(ArrayRecord, weight)`` for each reply, lazily (replies may be Messages or contents)."""
    for reply in replies:
        content = reply.content if isinstance(reply, Message) else reply
        yield reply_arrays(content), reply_weight(content, key)


class StreamingSum:
    """Running ``sum_k c_k * x_k`` over records added one at a time.

    ``add(record, coefficient, scale=None)`` adds ``coefficient * x`` for each
    array ``x``; ``scale(name, x)`` may return an extra per-array factor (used
    by L-DAWA's layer cosines). ``finish(denominators)`` divides each array by
    its denominator and returns the ArrayRecord, releasing the accumulator
    layer by layer as the output is serialised.
    """

    def __init__(self) -> None:
        self._acc: dict[str, np.ndarray] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self.count = 0

    def add(self, record: ArrayRecord | Mapping[str, np.ndarray], coefficient: float, scale=None) -> None:
        if self.count and set(record.keys()) != set(self._acc):
            raise ValueError("records to aggregate must hold the same array names")
        for name, array in record.items():
            x = array.numpy() if isinstance(array, Array) else np.asarray(array)
            factor = coefficient if scale is None else coefficient * scale(name, x)
            acc = self._acc.get(name)
            if acc is None:
                self._dtypes[name] = x.dtype
                acc = self._acc[name] = np.zeros(x.shape, ACCUMULATOR)
            elif acc.shape != x.shape:
                raise ValueError(f"array {name!r}: shape {x.shape} differs from {acc.shape}")
            term = x.astype(ACCUMULATOR)  # the one float64 temporary of this layer
            del x
            term *= float(factor)
            acc += term
            del term
        self.count += 1

    def finish(self, denominators: dict[str, float] | float) -> ArrayRecord:
        """The sums divided by their denominators, in each array's dtype; raises if any is not finite."""
        if not self.count:
            raise ValueError("nothing to aggregate")
        out = ArrayRecord()
        for name in list(self._acc):
            acc = self._acc.pop(name)
            den = denominators if isinstance(denominators, (int, float)) else denominators[name]
            acc /= float(den)
            if not np.isfinite(acc).all():
                raise FloatingPointError(f"the aggregate of array {name!r} is not finite")
            out[name] = Array(np.asarray(cast_like(acc, self._dtypes[name])))
            del acc
        return out


def streaming_weighted_mean(pairs: Iterable[tuple[ArrayRecord, float]]) -> ArrayRecord:
    """Data-size-weighted mean (FedAvg) of ``(ArrayRecord, weight)`` pairs, in one pass."""
    total = StreamingSum()
    weight_sum = 0.0
    for record, weight in pairs:
        total.add(record, weight)
        weight_sum += weight
    if weight_sum <= 0:
        raise ValueError("the weights of the records to aggregate sum to zero")
    return total.finish(weight_sum)
