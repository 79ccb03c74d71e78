"""Streaming aggregation: same numbers as Flower's, a few model copies of working memory, lazy replies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

import benchmarks.bench_aggregation as bench
from strategies.ldawa import LDAWASum
from strategies.streaming import StreamingSum, streaming_weighted_mean, weighted_pairs

# ResNet-like proportions: many layers, the largest a small part of the model (as in ResNet-18, ~1/5).
SHAPES = {
    "encoder.conv1.weight": ((64, 3, 3, 3), np.dtype(np.float32)),
    **{f"encoder.layer{i}.conv.weight": ((128, 128, 3, 3), np.dtype(np.float32)) for i in range(8)},
    "encoder.layer1.0.bn1.bias": ((256,), np.dtype(np.float32)),
    "encoder.layer1.0.bn1.num_batches_tracked": ((), np.dtype(np.int64)),
    "projector.0.weight": ((512, 256), np.dtype(np.float32)),
}
MODEL_BYTES = sum(int(np.prod(s)) * d.itemsize for s, d in SHAPES.values())


@pytest.fixture(scope="module")
def bases():
    return bench.base_models(SHAPES, pool=3)


def test_streaming_mean_equals_flower_and_numpy(bases):
    replies = [bench.make_reply(i, bases) for i in range(7)]
    ours = streaming_weighted_mean(weighted_pairs(replies, "num-examples"))
    flower = bench.flower_fedavg(replies)
    weights = np.array([float(r["metrics"]["num-examples"]) for r in replies])
    for name, (shape, dtype) in SHAPES.items():
        stack = np.stack([r["arrays"][name].numpy().astype(np.float64) for r in replies])
        want = np.tensordot(weights / weights.sum(), stack, axes=1)
        got = ours[name].numpy()
        assert got.shape == shape and got.dtype == dtype
        if dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(got, flower[name].numpy(), rtol=1e-5, atol=1e-7)
        else:
            assert got == np.rint(want)


def _peak_models(fn) -> float:
    _, peak_mib, _ = bench.measure(fn)
    return peak_mib * 2**20 / MODEL_BYTES


def test_working_memory_is_a_few_model_copies(bases):
    replies = [bench.make_reply(i, bases) for i in range(20)]
    glob = ArrayRecord({k: Array(v) for k, v in bases[0].items()})
    stream = _peak_models(lambda: streaming_weighted_mean(weighted_pairs(replies, "num-examples")))
    ldawa = _peak_models(lambda: bench._ldawa(replies, glob))
    # A float64 accumulator (two float32 models) handing its layers to the output one by one (+ one float64
    # layer in flight); L-DAWA also holds the previous global model.
    assert stream < 2.5, stream
    assert ldawa < 3.5, ldawa
    # Holding every reply decoded at once (what a list of numpy state dicts would need) is 20 models.
    decoded = _peak_models(lambda: [{k: a.numpy() for k, a in r["arrays"].items()} for r in replies])
    assert decoded > 15


def test_lazy_replies_are_generated_on_demand_and_streamed_once(bases):
    made = []

    class Counting(bench.LazyReplies):
        def __iter__(self):
            for reply in super().__iter__():
                made.append(1)
                yield reply

    peaks = {}
    for n in (4, 24):
        replies = Counting(n, bases)
        made.clear()
        peaks[n] = _peak_models(lambda: streaming_weighted_mean(weighted_pairs(replies, "num-examples")))
        assert len(made) == n  # one pass
    # Working memory does not grow with the number of replies (24 replies held at once would be +20 models).
    assert peaks[24] - peaks[4] < 0.5, peaks
    assert peaks[24] < 8.0, peaks


def test_streaming_sum_rejects_mismatched_records():
    total = StreamingSum()
    total.add({"a": np.ones(2, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="same array names"):
        total.add({"b": np.ones(2, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="shape"):
        total.add({"a": np.ones(3, np.float32)}, 1.0)
    with pytest.raises(ValueError, match="sum to zero"):
        streaming_weighted_mean([(ArrayRecord({"a": Array(np.ones(2, np.float32))}), 0.0)])


def test_ldawa_sum_keeps_global_order_and_dtypes(bases):
    glob = ArrayRecord({k: Array(v) for k, v in bases[0].items()})
    agg = LDAWASum(glob)
    for i in range(3):
        agg.add(bench.make_reply(i, bases)["arrays"], 1.0)
    out = agg.finish()
    assert list(out.keys()) == list(glob.keys())
    assert all(out[k].dtype == glob[k].dtype and tuple(out[k].shape) == tuple(glob[k].shape) for k in glob.keys())


def test_benchmark_script_runs_on_small_shapes(monkeypatch, capsys):
    monkeypatch.setattr(bench, "model_shapes", lambda encoder: SHAPES)
    rows = bench.run([2, 3], lazy_from=3, encoder="tiny")
    out = capsys.readouterr().out
    assert "generated lazily" in out and "held in memory" in out
    methods = {(r["n"], r["method"]) for r in rows}
    assert {(2, "robust-fedavg"), (2, "flower-fedavg"), (2, "check"), (3, "generate-only"), (3, "stream-fedavg")} <= methods
    assert (3, "robust-fedavg") not in methods and (3, "flower-fedavg") not in methods
    assert all(r["max_abs_diff_float"] < 1e-6 for r in rows if r["method"] == "check")
