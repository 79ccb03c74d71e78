"""The packed wire format: a lossless round trip, three objects instead of one per array, and crafted packed
records that never unpack into something the reply checks would not see."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from strategies.packed_arrays import LAYOUT, is_packed, pack, unpack
from tests.fake_grid import arrays_of


def model_record() -> ArrayRecord:
    from models.ssl_model import SSLModel

    torch.manual_seed(0)
    return ArrayRecord(SSLModel("resnet18_half_cifar", 64, 32).state_dict())


def test_a_state_dict_travels_as_three_arrays_and_comes_back_bit_for_bit():
    record = model_record()
    packed = pack(record)
    assert len(record) > 100 and sorted(packed.keys()) == ["wire-float32", "wire-int64", LAYOUT]
    back = unpack(packed, record)
    assert back is not None and list(back.keys()) == list(record.keys())
    for name, array in record.items():
        a, b = array.numpy(), back[name].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    payload = sum(len(a.data) for a in record.values())
    assert sum(len(a.data) for a in packed.values()) < payload  # one .npy header per dtype, not per array


def test_float16_and_zero_dim_arrays_survive():
    record = arrays_of({"w": np.arange(6, dtype=np.float16).reshape(2, 3), "n": np.array(3, np.int64),
                        "b": np.ones(2, np.float32)})
    back = unpack(pack(record))
    assert back is not None and back["n"].numpy().shape == () and back["w"].numpy().dtype == np.float16


def _npy(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    return buffer.getvalue()


def _with_layout(packed: ArrayRecord, layout) -> ArrayRecord:
    header = np.frombuffer(json.dumps(layout).encode(), dtype=np.uint8)
    return ArrayRecord({**dict(packed.items()), LAYOUT: Array(np.ascontiguousarray(header))})


GLOBAL = arrays_of({"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32), "n": np.array(2, np.int64)})


@pytest.mark.parametrize("case", ["other-names", "other-shape", "short-buffer", "long-buffer", "extra-key",
                                  "missing-buffer", "float64-under-float32", "bad-json", "not-a-list",
                                  "duplicate-name", "unknown-dtype", "negative-dim", "object-payload",
                                  "header-claims-1e9"])
def test_crafted_packed_records_do_not_unpack(case):
    good = pack(GLOBAL)
    layout = [["w", "float32", [2, 3]], ["b", "float32", [3]], ["n", "int64", []]]
    crafted = {
        "other-names": lambda: _with_layout(good, [["x", "float32", [2, 3]], *layout[1:]]),
        "other-shape": lambda: _with_layout(good, [["w", "float32", [3, 2]], *layout[1:]]),
        "short-buffer": lambda: ArrayRecord({**dict(good.items()), "wire-float32": Array(np.ones(8, np.float32))}),
        "long-buffer": lambda: ArrayRecord({**dict(good.items()), "wire-float32": Array(np.ones(10, np.float32))}),
        "extra-key": lambda: ArrayRecord({**dict(good.items()), "arrays": Array(np.ones(1, np.float32))}),
        "missing-buffer": lambda: ArrayRecord({k: v for k, v in good.items() if k != "wire-int64"}),
        "float64-under-float32": lambda: ArrayRecord({**dict(good.items()),
                                                      "wire-float32": Array(np.ones(9, np.float64))}),
        "bad-json": lambda: ArrayRecord({**dict(good.items()),
                                         LAYOUT: Array(np.frombuffer(b"[[\xff", dtype=np.uint8).copy())}),
        "not-a-list": lambda: _with_layout(good, {"w": 1}),
        "duplicate-name": lambda: _with_layout(good, [layout[0], ["w", "float32", [3]], layout[2]]),
        "unknown-dtype": lambda: _with_layout(good, [*layout[:2], ["n", "object", []]]),
        "negative-dim": lambda: _with_layout(good, [["w", "float32", [-2, 3]], *layout[1:]]),
        "object-payload": lambda: ArrayRecord({**dict(good.items()), "wire-float32": Array(
            dtype="float32", shape=(9,), stype="numpy.ndarray", data=_npy(np.array(["x"] * 9)))}),
        "header-claims-1e9": lambda: ArrayRecord({**dict(good.items()), "wire-float32": Array(
            dtype="float32", shape=(9,), stype="numpy.ndarray",
            data=_npy(np.ones(9, np.float32)).replace(b"(9,)", b"(1000000000,)"))}),
    }[case]()
    assert is_packed(crafted) and unpack(crafted, GLOBAL) is None


def test_a_packed_reply_that_does_not_unpack_is_dropped_and_counted():
    from server_app.packed_wire import unpack_reply
    from strategies.registry import make_strategy
    from tests.fake_grid import FakeGrid, numpy_of, train_reply
    from tests.strategies.replies import global_weights, honest

    def respond(msg):
        node = msg.metadata.dst_node_id
        reply = train_reply(msg, None, {"loss": 1.0}, 10.0, extra={"arrays": pack(arrays_of(honest(node)))})
        if node == 3:
            reply.content.array_records["arrays"]["wire-float32"] = Array(np.ones(2, np.float32))
        return unpack_reply(reply, arrays_of(global_weights()))

    seen = {}
    result = make_strategy("fedavg", common={"fraction_evaluate": 0.0, "min_train_nodes": 3,
                                             "min_available_nodes": 3}).start(
        grid=FakeGrid([1, 2, 3], respond), initial_arrays=arrays_of(global_weights()), num_rounds=1,
        train_config=ConfigRecord({}), evaluate_fn=lambda r, a: seen.__setitem__(r, numpy_of(a)))
    metrics = result.train_metrics_clientapp[1]
    assert metrics["replies-aggregated"] == 2 and metrics["replies-dropped-shape"] == 1
    want = (honest(1)["w"].astype(np.float64) + honest(2)["w"]) / 2
    np.testing.assert_allclose(seen[1]["w"], want, rtol=1e-6)


def test_the_client_mod_unpacks_the_model_and_packs_the_reply():
    from client_app.wire_mod import wire_mod

    seen = {}

    def app(msg, _ctxt):
        seen["keys"] = list(msg.content.array_records["arrays"].keys())
        return Message(RecordDict({"arrays": msg.content.array_records["arrays"]}), reply_to=msg)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    packed = Message(RecordDict({"arrays": pack(GLOBAL)}), dst_node_id=1, message_type="train")
    reply = wire_mod(packed, context, app)
    assert seen["keys"] == ["w", "b", "n"] and is_packed(reply.content.array_records["arrays"])
    plain = Message(RecordDict({"arrays": GLOBAL}), dst_node_id=1, message_type="train")
    assert not is_packed(wire_mod(plain, context, app).content.array_records["arrays"])
    broken = Message(RecordDict({"arrays": _with_layout(pack(GLOBAL), {"w": 1})}), dst_node_id=1,
                     message_type="train")
    assert wire_mod(broken, context, app).has_error()
