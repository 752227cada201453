"""Weights on the wire: one-copy `.npy` records, zero-copy views, and the torch passes of `medi_core.transfer`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array

from medi_core import transfer, wire

ARRAYS = [
    np.float32(3.5),
    np.arange(12, dtype=np.float16).reshape(3, 4),
    np.asfortranarray(np.arange(15, dtype=np.float64).reshape(3, 5)),
    np.array([], dtype=np.float32),
    np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2],
]


@pytest.mark.parametrize("array", ARRAYS, ids=["0-d", "fp16", "fortran", "empty", "strided"])
def test_to_array_round_trips_through_flower(array):
    ours = wire.to_array(array)
    np.testing.assert_array_equal(ours.numpy(), array)  # Flower's own reader accepts our bytes
    view = wire.array_view(ours)
    np.testing.assert_array_equal(view, array)
    assert view.dtype == np.asarray(array).dtype
    assert view.shape == np.asarray(array).shape


def test_to_array_bytes_equal_flower_array():
    array = np.arange(20, dtype=np.float16).reshape(4, 5)
    assert wire.to_array(array).data == Array(array).data


def test_array_view_shares_the_received_bytes():
    array = Array(np.arange(6, dtype=np.float32))
    view = wire.array_view(array)
    assert not view.flags.writeable
    assert np.shares_memory(view, np.frombuffer(array.data, dtype=np.uint8))


def test_array_view_reads_fortran_order_header():
    array = Array(dtype="float64", shape=(2, 3), stype="numpy.ndarray", data=_npy_bytes(np.asfortranarray(np.eye(2, 3))))
    np.testing.assert_array_equal(wire.array_view(array), np.eye(2, 3))


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_array_view_refuses_object_arrays():
    with pytest.raises(TypeError, match="Python objects"):
        wire.to_array(np.array([object()], dtype=object))


def test_encode_decode_round_trip_and_overflow():
    arrays = {"a": np.array([1.0, 65504.0, 1e6], dtype=np.float32)}
    half = transfer.encode(arrays, "float16")["a"]
    assert half.dtype == np.float16
    assert np.isinf(half[2])  # beyond fp16 range: caught later by the server's screen
    back = transfer.decode({"a": half})["a"]
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back[:2], [1.0, 65504.0])
    same = transfer.decode(arrays)["a"]
    assert np.shares_memory(same, arrays["a"])  # fp32 passes through uncopied


def test_decode_keeps_received_views_read_only():
    view = wire.array_view(wire.to_array(np.arange(4, dtype=np.float32)))
    assert not transfer.decode({"a": view})["a"].flags.writeable


def test_encode_rejects_unknown_precision():
    with pytest.raises(ValueError, match="transfer precision must be"):
        transfer.encode({"a": np.zeros(1, np.float32)}, "bfloat16")


def test_subtract_in_place_matches_weight_delta():
    rng = np.random.default_rng(0)
    received32 = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    received16 = transfer.encode(received32, "float16")
    for received in (received32, received16):
        tensors = transfer.to_fp32_tensors(received)
        with torch.no_grad():
            for t in tensors.values():
                t.add_(0.25)
        state = {**tensors, "steps": torch.tensor(3)}  # non-float buffers are not part of the update
        expected = transfer.weight_delta({k: t.numpy().copy() for k, t in tensors.items()}, received)
        delta = transfer.subtract_in_place(state, received)
        assert sorted(delta) == ["b", "w"]
        for name in received:
            np.testing.assert_allclose(delta[name], expected[name], rtol=0, atol=1e-7)
            np.testing.assert_allclose(delta[name], 0.25, rtol=0, atol=1e-6)


def test_subtract_in_place_names_missing_array():
    received = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
    with pytest.raises(ValueError, match=r"missing arrays \['b'\]"):
        transfer.subtract_in_place({"w": torch.zeros(2)}, received)


def test_weighted_sum_mixed_precision():
    a = {"w": np.array([1.0, 2.0], dtype=np.float16)}
    b = {"w": np.array([3.0, 4.0], dtype=np.float32)}
    total = transfer.weighted_sum([a, b], [0.25, 0.75])
    np.testing.assert_allclose(total["w"], [2.5, 3.5])
    assert total["w"].dtype == np.float32
    with pytest.raises(ValueError, match="one weight per update"):
        transfer.weighted_sum([a, b], [1.0])


def test_norm_and_non_finite_on_fp16_views():
    arrays = {"a": np.array([3.0], dtype=np.float16), "b": np.array([4.0], dtype=np.float32)}
    assert transfer.global_norm(arrays) == pytest.approx(5.0)
    assert transfer.first_non_finite(arrays) is None
    arrays["b"] = np.array([np.nan], dtype=np.float32)
    view = wire.array_view(wire.to_array(arrays["b"]))
    assert transfer.first_non_finite({"a": arrays["a"], "b": view}) == "b"
