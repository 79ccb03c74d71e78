"""Streaming aggregation: one accumulator plus one reply at a time.

Flower's ``aggregate_arrayrecords`` keeps a full-model accumulator and then
builds the output record beside it (two model copies at the peak), and it walks
the replies twice (once for the weights, once for the sum), so it needs them
all in memory. The helpers here walk the replies once, in order, and only need
them one at a time:

* the working memory is one accumulator the size of the model (in each layer's
  own float dtype, as Flower does; integer layers in float64) plus one layer of
  the reply being added;
* the output record is built layer by layer while the accumulator's layer is
  released, so the peak stays near one model copy;
* they accept any iterable, including a generator producing replies on demand
  (see ``experiments/bench_aggregation.py``).

Each reply is given as ``(ArrayRecord, weight)``; the result is
``sum_k weight_k * x_k / sum_k weight_k`` per array, cast back to the array's
dtype (integers rounded).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """Accumulate float layers in their own dtype (as Flower), others in float64."""
    dtype = np.dtype(dtype)
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as ``dtype``; integer and bool targets are rounded first."""
    dtype = np.dtype(dtype)
    if values.dtype == dtype:
        return values
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        values = np.rint(values)
    return values.astype(dtype)


def reply_arrays(content: RecordDict) -> ArrayRecord:
    """The (single) ArrayRecord of a train reply, whatever its key."""
    return next(iter(content.array_records.values()))


def reply_weight(content: RecordDict, key: str) -> float:
    """The weighting value (e.g. ``num-examples``) of a train reply's single MetricRecord."""
    return float(next(iter(content.metric_records.values()))[key])


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

    def add(self, record: ArrayRecord, coefficient: float, scale=None) -> None:
        if self.count and set(record.keys()) != set(self._acc):
            raise ValueError("records to aggregate must hold the same array names")
        for name, array in record.items():
            x = array.numpy() if isinstance(array, Array) else np.array(array)  # a fresh, writable copy
            factor = coefficient if scale is None else coefficient * scale(name, x)
            acc = self._acc.get(name)
            if acc is None:
                self._dtypes[name] = x.dtype
                acc_dtype = accumulator_dtype(x.dtype)
                acc = self._acc[name] = np.zeros(x.shape, acc_dtype)
            elif acc.shape != x.shape:
                raise ValueError(f"array {name!r}: shape {x.shape} differs from {acc.shape}")
            # In place: no temporary beyond the deserialised layer ``x`` itself.
            if acc.dtype == x.dtype:
                x *= acc.dtype.type(factor)
                acc += x
            else:
                acc += x.astype(acc.dtype) * factor
            del x
        self.count += 1

    def finish(self, denominators: dict[str, float] | float) -> ArrayRecord:
        if not self.count:
            raise ValueError("nothing to aggregate")
        out = ArrayRecord()
        for name in list(self._acc):
            acc = self._acc.pop(name)
            den = denominators if isinstance(denominators, (int, float)) else denominators[name]
            acc /= acc.dtype.type(den)
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


class StreamingFedAvg(FedAvg):
    """Flower's FedAvg with the weighted mean computed by :func:`streaming_weighted_mean`.

    Same formula as ``flwr.serverapp.strategy.FedAvg`` (``sum n_k x_k / sum n_k``);
    only the working memory differs. Placed after a Flower strategy in a class's
    bases (``class X(FedProx, StreamingFedAvg)``), it also replaces the weighted
    mean inside Flower strategies that build on FedAvg's ``aggregate_train``
    (FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) while their own server-side
    formulas stay Flower's.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        arrays = streaming_weighted_mean(weighted_pairs(contents, self.weighted_by_key))
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return arrays, metrics
