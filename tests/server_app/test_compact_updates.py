"""update-dtype='float16': half the bytes per reply, widened back on the server only when the run asks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord

from client_app.resources import record_bytes, reply_arrays
from server_app.compact_updates import widen_reply
from server_app.round_loop import run_rounds
from strategies.half_precision import narrow_arrays
from strategies.registry import make_strategy
from tests.fake_grid import FakeGrid, arrays_of, numpy_of, train_reply

COMMON = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 2, "min_evaluate_nodes": 0,
          "min_available_nodes": 2}


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=(64, 32)).astype(np.float32), "n": np.array(3, dtype=np.int64)}


def _half_client(msg):
    """A client sending float16 weights moved by +0.25 (exact in float16 for these magnitudes: checked below)."""
    weights = numpy_of(msg.content["arrays"])
    return train_reply(msg, {"w": (weights["w"] + 0.25).astype(np.float16), "n": weights["n"]})


def test_client_sends_float32_weights_as_float16_and_keeps_integer_buffers():
    model = torch.nn.BatchNorm1d(256)
    full, half = reply_arrays(model), reply_arrays(model, "float16")
    assert full["weight"].dtype == "float32" and half["weight"].dtype == "float16"
    assert half["num_batches_tracked"].dtype == "int64"
    assert record_bytes(half) < 0.6 * record_bytes(full)
    with torch.no_grad():
        model.running_var.fill_(1e6)  # finite, beyond float16: sent as float32 rather than as inf
    assert reply_arrays(model, "float16")["running_var"].dtype == "float32"


def test_float16_replies_are_aggregated_only_when_the_run_asks_for_them():
    start = arrays_of(_global())
    want = _global()["w"].astype(np.float16).astype(np.float32)  # what the clients' float16 could carry
    compact = run_rounds(make_strategy("fedavg", common=COMMON), FakeGrid([1, 2, 3], _half_client), start,
                         num_rounds=1, compact_updates=True)
    got = numpy_of(compact.arrays)["w"]
    assert got.dtype == np.float32 and np.abs(got - (_global()["w"] + 0.25)).max() <= np.abs(want).max() * 2**-10
    seen = []
    plain = run_rounds(make_strategy("fedavg", common=COMMON), FakeGrid([1, 2, 3], _half_client), start,
                       num_rounds=1, record_train=seen.append)
    assert len(plain.arrays) == 0 and not seen[0].aggregated  # every float16 reply dropped: model kept
    assert seen[0].metrics["replies-dropped-dtype"] == 3


def test_only_float16_arrays_of_the_global_shape_are_widened():
    start = arrays_of(_global())
    msg = next(iter(make_strategy("fedavg", common=COMMON).configure_train(1, start, ConfigRecord({}),
                                                                         FakeGrid([1, 2], None))))
    wrong_shape = train_reply(msg, {"w": np.zeros((32, 64), np.float16), "n": np.array(3)})
    assert widen_reply(wrong_shape, start).content["arrays"]["w"].dtype == "float16"  # left for the checks
    inf = train_reply(msg, {"w": np.full((64, 32), np.inf, np.float16), "n": np.array(3)})
    assert not np.isfinite(widen_reply(inf, start).content["arrays"]["w"].numpy()).any()  # then dropped as non-finite
    padded = train_reply(msg, {"w": np.zeros((64, 32), np.float16), "n": np.array(3)})
    padded.content["arrays"]["w"] = Array(dtype="float16", shape=(64, 32), stype="numpy.ndarray",
                                          data=padded.content["arrays"]["w"].data + b"\0" * 10_000)
    assert widen_reply(padded, start).content["arrays"]["w"].dtype == "float16"  # not decoded


def test_float16_updates_and_client_side_clipping_are_refused_together():
    from app_config.run_config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="^update-dtype: 'float16' cannot be combined with dp='client-fixed'"):
        RunConfig.from_mapping({"update-dtype": "float16", "dp": "client-fixed"})
    assert RunConfig.from_mapping({"update-dtype": "float16", "dp": "server-fixed"}).update_dtype == "float16"


def test_the_global_model_goes_out_as_float16_only_when_the_run_asks():
    start = arrays_of(_global())
    grids = {mode: FakeGrid([1, 2, 3], _half_client) for mode in (True, False)}
    seen: dict[bool, list] = {True: [], False: []}
    for mode, grid in grids.items():
        run_rounds(make_strategy("fedavg", common=COMMON), grid, start, num_rounds=1, compact_updates=mode,
                   record_train=seen[mode].append)
    sent = [m.content["arrays"] for m in grids[True].sent]
    assert {a["w"].dtype for a in sent} == {"float16"} and {a["n"].dtype for a in sent} == {"int64"}
    assert np.array_equal(sent[0]["w"].numpy(), _global()["w"].astype(np.float16))
    assert {m.content["arrays"]["w"].dtype for m in grids[False].sent} == {"float32"}
    assert start["w"].dtype == "float32"  # the server's own global model is not narrowed
    assert seen[True][0].bytes_sent < 0.55 * seen[False][0].bytes_sent


def test_an_array_beyond_float16_range_goes_out_as_float32():
    big = {"w": np.full((4, 4), 1e6, np.float32), "v": np.ones(3, np.float32)}
    narrowed = narrow_arrays(arrays_of(big))
    assert narrowed["w"].dtype == "float32" and narrowed["v"].dtype == "float16"
    assert np.array_equal(narrowed["w"].numpy(), big["w"])


def _payload(values: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    import io

    from numpy.lib import format as npy_format

    stream = io.BytesIO()
    if version is None:
        np.save(stream, values, allow_pickle=False)
    else:
        npy_format.write_array(stream, values, version=version, allow_pickle=False)
    return stream.getvalue()


def _huge_header() -> bytes:
    import io

    from numpy.lib import format as npy_format

    stream = io.BytesIO()
    npy_format.write_array_header_1_0(stream, {"descr": "<f2", "fortran_order": False, "shape": (10**9,)})
    return stream.getvalue() + b"\0" * 64


CRAFTED = {
    "unicode": _payload(np.full((64, 32), "a", dtype="U1")),
    "bytes": _payload(np.full((64, 32), b"a", dtype="S1")),
    "void": _payload(np.zeros((64, 32), dtype="V2")),
    "structured": _payload(np.zeros((64, 32), dtype=[("a", "u1"), ("b", "u1")])),
    "float64": _payload(np.zeros((64, 32), np.float64)),
    "big-endian": _payload(np.zeros((64, 32), ">f2")),
    "npy-3.0": _payload(np.zeros((64, 32), np.float16), version=(3, 0)),
    "complex": _payload(np.zeros((64, 32), np.complex64)),
    "datetime": _payload(np.zeros((64, 32), "datetime64[s]")),
    "huge-header": _huge_header(),
    "not-npy": b"\x93NUMPY garbage",
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_a_crafted_float16_payload_is_left_for_the_checks_and_never_crashes_the_round(kind):
    """float16 metadata over another payload (string, void, structured, float64, big-endian, npy 3.0, a header
    claiming 10**9 values, ...): nothing is decoded or allocated, the reply is dropped and counted, and the
    honest replies are aggregated."""
    start = arrays_of(_global())

    def client(msg):
        reply = _half_client(msg)
        if msg.metadata.dst_node_id == 3:
            arrays = reply.content["arrays"]
            arrays["w"] = Array(dtype="float16", shape=(64, 32), stype="numpy.ndarray", data=CRAFTED[kind])
        return reply

    seen = []
    result = run_rounds(make_strategy("fedavg", common=COMMON), FakeGrid([1, 2, 3], client), start, num_rounds=1,
                        compact_updates=True, record_train=seen.append)
    dropped = {k: v for k, v in seen[0].metrics.items() if k.startswith("replies-dropped-") and v}
    assert seen[0].aggregated and sum(dropped.values()) == 1, dropped
    honest = run_rounds(make_strategy("fedavg", common=COMMON), FakeGrid([1, 2], _half_client), start, num_rounds=1,
                        compact_updates=True)
    assert np.array_equal(numpy_of(result.arrays)["w"], numpy_of(honest.arrays)["w"])
