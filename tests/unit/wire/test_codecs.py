from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from tessera.common.errors import InvalidSpec
from tessera.v1 import tensor_pb2
from tessera.wire.codecs import (
    CODECS,
    Codec,
    NoneCodec,
    TensorMeta,
    TopKCodec,
    codec_by_wire_id,
    codec_for,
    dtype_from_name,
    dtype_name,
    encode_tensor,
    get_codec,
    register_codec,
)
from tessera.wire.codecs.int8 import CHUNK

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
ALL_DTYPES = (*FLOATS, torch.int64, torch.int32, torch.uint8, torch.int8, torch.bool)


def _roundtrip(codec: Codec, tensor: torch.Tensor) -> tuple[memoryview, torch.Tensor]:
    payload = codec.encode(tensor)
    return payload, codec.decode(payload, tensor.dtype, tuple(tensor.shape))


def _output_rounding(dtype: torch.dtype, decoded: torch.Tensor) -> torch.Tensor:
    """Half an ulp of the output dtype: the cast back to it may add that much."""
    return decoded.double().abs() * torch.finfo(dtype).eps / 2


def _check_none(x: torch.Tensor, decoded: torch.Tensor, payload: memoryview) -> None:
    assert torch.equal(decoded, x)


def _relative_bound(mantissa_bits: int, smallest: float) -> Callable[..., None]:
    def check(x: torch.Tensor, decoded: torch.Tensor, payload: memoryview) -> None:
        exact, got = x.double(), decoded.double()
        bound = exact.abs() * 2.0 ** -(mantissa_bits + 1) * (1 + 1e-3) + smallest
        assert torch.all((got - exact).abs() <= bound + _output_rounding(x.dtype, decoded))

    return check


def _check_int8(x: torch.Tensor, decoded: torch.Tensor, payload: memoryview) -> None:
    exact = x.double().reshape(-1)
    n = exact.numel()
    blocks = math.ceil(n / CHUNK)
    padded = torch.zeros(blocks * CHUNK, dtype=torch.float64)
    padded[:n] = exact.float().double()
    scales = padded.view(blocks, CHUNK).abs().amax(dim=1) / 127
    bound = scales.repeat_interleave(CHUNK)[:n] / 2 * (1 + 1e-4) + 1e-30
    error = (decoded.double().reshape(-1) - exact).abs()
    assert torch.all(error <= bound + _output_rounding(x.dtype, decoded).reshape(-1))


def _check_topk(x: torch.Tensor, decoded: torch.Tensor, payload: memoryview) -> None:
    flat, got = x.reshape(-1), decoded.reshape(-1)
    k = payload.nbytes // 8
    assert k == (0 if flat.numel() == 0 else max(1, math.ceil(0.01 * flat.numel())))
    kept = torch.from_numpy(np.frombuffer(payload, dtype=np.int32, count=k).astype(np.int64))
    assert torch.all(kept[1:] > kept[:-1])
    dropped = torch.ones(flat.numel(), dtype=torch.bool)
    dropped[kept] = False
    assert torch.equal(got[kept], flat[kept])
    assert torch.all(got[dropped] == 0)
    if k and dropped.any():
        assert flat[kept].abs().min() >= flat[dropped].abs().max()


BOUNDS: dict[str, Callable[[torch.Tensor, torch.Tensor, memoryview], None]] = {
    "none": _check_none,
    "fp16": _relative_bound(10, 2.0**-25),
    "bf16": _relative_bound(7, 2.0**-134),
    "int8": _check_int8,
    "topk": _check_topk,
}


def test_every_codec_has_an_error_bound() -> None:
    assert set(BOUNDS) == set(CODECS)


def test_registry_matches_the_proto_enum() -> None:
    enum = {
        name.removeprefix("CODEC_").lower(): value
        for name, value in tensor_pb2.Codec.items()
        if value != tensor_pb2.CODEC_UNSPECIFIED
    }
    assert {name: CODECS[name]().wire_id for name in CODECS} == enum
    for name, value in enum.items():
        assert codec_by_wire_id(value).name == name


@pytest.mark.parametrize("name", sorted(BOUNDS))
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (1,), (7, 5), (3, 2 * CHUNK + 5)])
def test_roundtrip_within_bound(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    # Prepare
    codec = get_codec(name)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 3).to(dtype)
    # Execute
    payload, decoded = _roundtrip(codec, x)
    # Assert
    assert decoded.dtype == dtype
    assert tuple(decoded.shape) == shape
    assert payload.format == "B" and payload.ndim == 1
    BOUNDS[name](x, decoded, payload)
    size = codec.encoded_size(dtype, shape)
    assert size is None or size == payload.nbytes
    if x.numel():
        raw = x.numel() * dtype.itemsize
        assert codec.estimate_ratio(dtype, shape) == pytest.approx(payload.nbytes / raw)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(BOUNDS)),
    dtype=st.sampled_from(FLOATS),
    values=arrays(
        np.float32,
        array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        elements=st.floats(-6e4, 6e4, width=32),
    ),
)
def test_roundtrip_property(name: str, dtype: torch.dtype, values: np.ndarray) -> None:
    x = torch.from_numpy(values).to(dtype)
    payload, decoded = _roundtrip(get_codec(name), x)
    assert decoded.shape == x.shape and decoded.dtype == dtype
    BOUNDS[name](x, decoded, payload)


@settings(max_examples=40, deadline=None)
@given(
    ratio=st.floats(1e-3, 1.0),
    values=arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e6, 1e6, width=32)),
)
def test_topk_keeps_the_largest_entries_for_any_ratio(ratio: float, values: np.ndarray) -> None:
    x = torch.from_numpy(values)
    codec = TopKCodec(ratio)
    payload, decoded = _roundtrip(codec, x)
    k = codec.kept(x.numel())
    assert payload.nbytes == 8 * k and k == min(x.numel(), max(1, math.ceil(ratio * x.numel())))
    largest = x.abs().sort(descending=True).values[:k]
    assert decoded.count_nonzero() <= k
    assert torch.equal(decoded.abs().sort(descending=True).values[:k], largest)
    nonzero = decoded != 0
    assert torch.equal(decoded[nonzero], x[nonzero])


@pytest.mark.parametrize("name", sorted(BOUNDS))
@pytest.mark.parametrize("dtype", FLOATS)
def test_decodes_a_readonly_or_misaligned_payload(name: str, dtype: torch.dtype) -> None:
    codec = get_codec(name)
    x = torch.randn(3, 4).to(dtype)
    payload = codec.encode(x)
    shifted = memoryview(bytearray(1) + bytes(payload))[1:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_bytes = codec.decode(memoryview(bytes(payload)), dtype, (3, 4))
        from_shifted = codec.decode(shifted, dtype, (3, 4))
    assert torch.equal(from_bytes, codec.decode(payload, dtype, (3, 4)))
    assert torch.equal(from_shifted, from_bytes)
    assert from_shifted.data_ptr() % dtype.itemsize == 0


def test_none_encode_shares_the_tensors_memory() -> None:
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    payload = NoneCodec().encode(x)
    x[1, 2] = 42.0
    assert np.frombuffer(payload, dtype=np.float32)[5] == 42.0


def test_none_decode_is_a_view_of_the_payload() -> None:
    buffer = bytearray(np.arange(6, dtype=np.float32).tobytes())
    decoded = NoneCodec().decode(memoryview(buffer), torch.float32, (2, 3))
    assert decoded.data_ptr() == np.frombuffer(buffer, dtype=np.uint8).ctypes.data
    buffer[0:4] = np.float32(-7.0).tobytes()
    assert decoded[0, 0].item() == -7.0


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_none_roundtrips_every_dtype_exactly(dtype: torch.dtype) -> None:
    x = torch.tensor([[0, 1, 3], [5, 0, 1]]).to(dtype)
    payload, decoded = _roundtrip(NoneCodec(), x.t())
    assert payload.nbytes == 6 * dtype.itemsize
    assert torch.equal(decoded, x.t())


def test_fp16_payload_is_the_half_precision_bytes() -> None:
    x = torch.tensor([1.0, -2.5, 1e-3])
    assert bytes(get_codec("fp16").encode(x)) == x.half().numpy().tobytes()


def test_int8_payload_is_scales_then_values() -> None:
    x = torch.tensor([1.0, -0.5, 0.25, 0.0])
    payload = get_codec("int8").encode(x)
    assert np.frombuffer(payload, dtype=np.float32, count=1)[0] == np.float32(1.0) / 127
    assert np.frombuffer(payload, dtype=np.int8, offset=4).tolist() == [127, -64, 32, 0]


def test_int8_scales_each_block_separately() -> None:
    x = torch.cat([torch.full((CHUNK,), 1000.0), torch.linspace(-1e-3, 1e-3, 10)])
    payload, decoded = _roundtrip(get_codec("int8"), x)
    assert payload.nbytes == 2 * 4 + CHUNK + 10
    assert torch.allclose(decoded[CHUNK:], x[CHUNK:], atol=1e-3 / 254 * 1.001, rtol=0)


def test_int8_zero_block_decodes_to_zeros() -> None:
    x = torch.zeros(CHUNK + 3)
    x[-1] = 5.0
    _, decoded = _roundtrip(get_codec("int8"), x)
    assert torch.equal(decoded, x)


def test_topk_payload_is_sorted_indices_then_values() -> None:
    x = torch.tensor([0.1, -5.0, 3.0, 0.2])
    payload = TopKCodec(ratio=0.5).encode(x)
    expected = np.array([1, 2], np.int32).tobytes() + np.array([-5, 3], np.float32).tobytes()
    assert bytes(payload) == expected


@pytest.mark.parametrize("name", ["none", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_payload_length_is_invalid(name: str, delta: int) -> None:
    codec = get_codec(name)
    size = codec.encoded_size(torch.float32, (3, 4))
    assert size is not None
    with pytest.raises(InvalidSpec, match=rf"{name} payload for shape \(3, 4\) must be {size}"):
        codec.decode(memoryview(bytearray(size + delta)), torch.float32, (3, 4))


@pytest.mark.parametrize("length", [0, 7, 8 * 13, 8 * 12 + 4])
def test_topk_wrong_payload_length_is_invalid(length: int) -> None:
    with pytest.raises(InvalidSpec, match=r"topk payload for shape \(3, 4\)"):
        TopKCodec().decode(memoryview(bytearray(length)), torch.float32, (3, 4))


@pytest.mark.parametrize("index", [-1, 12, 2**31 - 1])
def test_topk_out_of_range_index_is_invalid(index: int) -> None:
    payload = np.array([0, index], np.int32).tobytes() + np.ones(2, np.float32).tobytes()
    with pytest.raises(InvalidSpec, match=f"index {index} outside"):
        TopKCodec().decode(memoryview(bytearray(payload)), torch.float32, (3, 4))


@pytest.mark.parametrize("name", ["fp16", "bf16", "int8", "topk"])
def test_lossy_codecs_reject_non_floating_tensors(name: str) -> None:
    codec = get_codec(name)
    ints = torch.arange(4)
    with pytest.raises(InvalidSpec, match="applies to floating tensors"):
        codec.encode(ints)
    with pytest.raises(InvalidSpec, match="applies to floating tensors"):
        codec.decode(memoryview(bytearray(32)), torch.int64, (4,))
    used, payload = encode_tensor(codec, ints)
    assert used.name == "none"
    assert torch.equal(used.decode(payload, torch.int64, (4,)), ints)
    assert codec_for(codec, torch.float16) is codec


def test_codec_by_wire_id_rejects_unspecified_and_unknown() -> None:
    for wire_id in (0, 6, -1):
        with pytest.raises(
            InvalidSpec, match=f"unknown codec id {wire_id}; valid ids: 1 \\(none\\)"
        ):
            codec_by_wire_id(wire_id)


def test_get_codec_reports_valid_names_and_options() -> None:
    with pytest.raises(InvalidSpec, match="unknown codec 'zstd'; valid codecs: bf16, fp16, int8"):
        get_codec("zstd")
    with pytest.raises(InvalidSpec, match="codec 'fp16' does not take options"):
        get_codec("fp16", ratio=0.1)
    topk = get_codec("topk", ratio=0.25)
    assert isinstance(topk, TopKCodec) and topk.ratio == 0.25


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_topk_rejects_bad_ratio(ratio: object) -> None:
    with pytest.raises(InvalidSpec, match=r"topk ratio .* must be a number in \(0, 1\]"):
        get_codec("topk", ratio=ratio)


def test_duplicate_registration_raises_and_changes_nothing() -> None:
    class Again(NoneCodec):
        pass

    class SameId(NoneCodec):
        name = "again"

    before = dict(CODECS)
    with pytest.raises(ValueError, match="'none' is already registered"):
        register_codec(Again)
    with pytest.raises(ValueError, match="wire id not in use, got 1"):
        register_codec(SameId)
    assert CODECS == before


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_dtype_names_roundtrip(dtype: torch.dtype) -> None:
    assert dtype_from_name(dtype_name(dtype)) == dtype
    assert dtype_name(dtype) == str(dtype).removeprefix("torch.")


def test_unsupported_dtypes_are_invalid() -> None:
    with pytest.raises(InvalidSpec, match="dtype torch.complex64 cannot be sent"):
        dtype_name(torch.complex64)
    with pytest.raises(InvalidSpec, match="unknown dtype 'float8'; supported dtypes: float32"):
        dtype_from_name("float8")


def test_tensor_meta_is_frozen() -> None:
    meta = TensorMeta("w", torch.float32, (2, 3), "none", 24)
    with pytest.raises(AttributeError):
        meta.byte_length = 0  # type: ignore[misc]
