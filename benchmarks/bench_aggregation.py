"""Aggregation cost: time and peak extra memory for N ResNet-18-shaped replies.

Compares, on the same replies,

* ``stream-fedavg``  -- ``strategies.streaming.streaming_weighted_mean`` (one pass,
  one accumulator, one reply layer at a time);
* ``stream-ldawa``   -- ``strategies.ldawa.LDAWASum`` (also holds the previous
  global model for the cosines);
* ``flower-fedavg``  -- Flower's own ``FedAvg.aggregate_train`` (public API), only when the replies
  are held in memory;
* ``robust-fedavg``  -- the registered ``fedavg`` strategy's whole
  ``aggregate_train`` (reply checks + streaming mean + dtype cast), only when
  the replies are held in memory.

Replies have the state-dict shapes of ``SSLModel('resnet18_cifar', 512, 128)``
(float32 weights, int64 ``num_batches_tracked``), distinct values and
``num-examples``. "Peak extra" is ``tracemalloc``'s peak (numpy buffers and
Python objects) above what was allocated before the aggregation started, i.e.
the aggregation's working memory beyond the replies themselves.

N at or above ``--lazy-from`` (default 500: 500 x 44 MB would not fit in RAM)
uses replies generated on demand: an iterable that builds each reply when it
is reached and drops it afterwards. The times then include generating the
replies (the generation-only pass is printed for reference), and the peak
includes the one reply being generated. Flower's ``FedAvg`` and the robust
strategy take a list of messages, so they run only when the replies fit in memory.

    python -m benchmarks.bench_aggregation                 # N = 10, 100, 500
    python -m benchmarks.bench_aggregation --sizes 10 100 --json bench.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from strategies.ldawa import LDAWASum
from strategies.streaming import streaming_weighted_mean, weighted_pairs

POOL = 4  # distinct base models the replies are derived from


def model_shapes(encoder: str = "resnet18_cifar") -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    from models.ssl_model import SSLModel

    state = SSLModel(encoder, 512, 128).state_dict()
    return {k: (tuple(v.shape), np.dtype(str(v.dtype).replace("torch.", ""))) for k, v in state.items()}


def base_models(shapes, pool: int = POOL, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    models = []
    for _ in range(pool):
        model = {}
        for name, (shape, dtype) in shapes.items():
            if np.issubdtype(dtype, np.floating):
                model[name] = rng.normal(scale=0.05, size=shape).astype(dtype)
            else:
                model[name] = np.full(shape, 10, dtype)
        models.append(model)
    return models


def make_reply(i: int, bases: list[dict[str, np.ndarray]]) -> RecordDict:
    base = bases[i % len(bases)]
    shift = np.float32(1e-4 * i)
    arrays = ArrayRecord({k: Array(np.asarray(v + shift if v.dtype.kind == "f" else v + (i % 3)))
                          for k, v in base.items()})
    return RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": float(10 + i % 7), "loss": 1.0})})


class LazyReplies:
    """A re-iterable sequence of N replies, each built when reached and not kept.

    Flower's records hold reference cycles, so a dropped reply is only freed by
    Python's cycle collector, at a time of its choosing; to keep at most one
    generated reply alive, the iterator collects after each one (with the
    objects that existed before the pass frozen, so that collection is cheap).
    """

    def __init__(self, n: int, bases) -> None:
        self.n, self.bases = n, bases

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[RecordDict]:
        gc.collect()
        gc.freeze()
        try:
            for i in range(self.n):
                yield make_reply(i, self.bases)
                gc.collect()
        finally:
            gc.unfreeze()


def measure(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(seconds, peak extra MiB, result) of ``fn()`` under tracemalloc."""
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, (peak - base) / 2**20, result


def max_abs_diff(a: ArrayRecord, b: ArrayRecord, floats: bool = True) -> float:
    """Largest difference over the float arrays (``floats``) or the integer ones."""
    diffs = [float(np.max(np.abs(a[k].numpy().astype(np.float64) - b[k].numpy().astype(np.float64))))
             for k in a.keys() if (np.dtype(a[k].dtype).kind == "f") == floats]
    return max(diffs, default=0.0)


def aggregated_as_messages(strategy, replies: list[RecordDict]) -> ArrayRecord:
    """``strategy.aggregate_train`` on the replies as train replies to one instruction."""
    from flwr.app import Message

    from tests.fake_grid import instruction, task_identity

    with task_identity():
        to = instruction(1)
        arrays, _ = strategy.aggregate_train(1, [Message(content=r, reply_to=to) for r in replies])
    return arrays


def flower_fedavg(replies: list[RecordDict]) -> ArrayRecord:
    """Flower's FedAvg, unchanged, on the replies as messages."""
    from flwr.serverapp.strategy import FedAvg

    return aggregated_as_messages(FedAvg(), replies)


def robust_fedavg(replies: list[RecordDict], global_arrays: ArrayRecord) -> ArrayRecord:
    from strategies.registry import make_strategy

    strategy = make_strategy("fedavg", common={"fraction_evaluate": 0.0})
    strategy.expect_model(global_arrays)  # as configure_train does
    return aggregated_as_messages(strategy, replies)


def run(sizes: list[int], lazy_from: int, encoder: str) -> list[dict]:
    shapes = model_shapes(encoder)
    bases = base_models(shapes)
    model_mb = sum(int(np.prod(s)) * d.itemsize for s, d in shapes.values()) / 2**20
    global_arrays = ArrayRecord({k: Array(v) for k, v in bases[0].items()})
    print(f"model: SSLModel({encoder!r}, 512, 128): {len(shapes)} arrays, {model_mb:.1f} MiB per reply")
    rows = []
    for n in sizes:
        lazy = n >= lazy_from
        if lazy:
            replies = LazyReplies(n, bases)
            print(f"\nN={n}: replies generated lazily, one at a time on demand ({n} x {model_mb:.0f} MiB would be "
                  f"{n * model_mb / 1024:.1f} GiB); times include generating them")
            t, m, _ = measure(lambda: sum(1 for _ in replies))
            rows.append({"n": n, "method": "generate-only", "lazy": True, "seconds": t, "peak_mib": m})
            print(f"  {'generate-only (1 pass)':<24} {t:8.2f} s   peak extra {m:8.1f} MiB ({m / model_mb:4.1f} models)")
        else:
            t0 = time.perf_counter()
            replies = [make_reply(i, bases) for i in range(n)]
            print(f"\nN={n}: replies held in memory ({n * model_mb / 1024:.1f} GiB, built in "
                  f"{time.perf_counter() - t0:.1f} s)")
        methods = {
            "stream-fedavg": lambda: streaming_weighted_mean(weighted_pairs(replies, "num-examples")),
            "stream-ldawa": lambda: _ldawa(replies, global_arrays),
        }
        if not lazy:
            methods["flower-fedavg"] = lambda: flower_fedavg(replies)
            methods["robust-fedavg"] = lambda: robust_fedavg(replies, global_arrays)
        results = {}
        for name, fn in methods.items():
            t, m, out = measure(fn)
            results[name] = out
            rows.append({"n": n, "method": name, "lazy": lazy, "seconds": t, "peak_mib": m,
                         "peak_models": m / model_mb})
            print(f"  {name:<24} {t:8.2f} s   peak extra {m:8.1f} MiB ({m / model_mb:4.1f} models)")
        if "flower-fedavg" not in results:
            del replies, results
            continue
        diff = max_abs_diff(results["stream-fedavg"], results["flower-fedavg"])
        diff_int = max_abs_diff(results["stream-fedavg"], results["flower-fedavg"], floats=False)
        print(f"  max |stream-fedavg - flower-fedavg|: float32 weights {diff:.2e}; int64 buffers {diff_int:.2f} "
              "(Flower leaves them as unrounded float64, the streaming mean rounds them back to int64)")
        rows.append({"n": n, "method": "check", "max_abs_diff_float": diff, "max_abs_diff_int": diff_int})
        del replies, results
        gc.collect()
    return rows


def _ldawa(replies, global_arrays: ArrayRecord) -> ArrayRecord:
    agg = LDAWASum(global_arrays)
    for record, weight in weighted_pairs(replies, "num-examples"):
        agg.add(record, weight)
    return agg.finish()


def main(argv: list[str] | None = None) -> int:
    from app_config.log_setup import setup_logging

    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--lazy-from", type=int, default=500, help="N from which replies are generated on demand")
    parser.add_argument("--encoder", default="resnet18_cifar")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    rows = run(args.sizes, args.lazy_from, args.encoder)
    print("\nsummary (time s / peak extra MiB):")
    print(f"  {'N':>5} {'stream-fedavg':>20} {'stream-ldawa':>20} {'flower-fedavg':>20} {'robust-fedavg':>20}")
    for n in args.sizes:
        cells = []
        for method in ("stream-fedavg", "stream-ldawa", "flower-fedavg", "robust-fedavg"):
            row = next((r for r in rows if r["n"] == n and r["method"] == method), None)
            cells.append(f"{row['seconds']:7.2f} / {row['peak_mib']:7.1f}" if row else f"{'--':>17}")
        print(f"  {n:>5} " + " ".join(f"{c:>20}" for c in cells))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
