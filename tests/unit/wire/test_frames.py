from __future__ import annotations

import pytest
import torch

from tessera.common.errors import InvalidSpec, QuotaExceeded
from tessera.v1 import aggregator_pb2
from tessera.wire.codecs import ErrorFeedback, TopKCodec
from tessera.wire.frames import (
    Assembler,
    NonFinite,
    all_finite,
    buffer_bytes,
    bytes_by_codec,
    encode_tensors,
    iter_chunks,
)
from tessera.wire.stream import (
    assemble,
    chunk_frames,
    chunks_after_header,
    frame_parser,
    metas_from_specs,
    parse_chunk_frame,
    specs_from_metas,
)


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(300, 7, generator=generator),
        "empty": torch.zeros(0),
        "b": torch.randn(5, dtype=torch.float64, generator=generator),
        "steps": torch.arange(3),
        "half": torch.randn(11, generator=generator).to(torch.bfloat16),
    }


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1000, 1 << 20])
def test_any_chunking_reassembles_exactly(chunk_bytes: int) -> None:
    # Prepare
    tensors = _tensors()
    encoded = encode_tensors(tensors)
    # Execute
    assembler = Assembler(encoded.metas, max_bytes=1 << 30)
    for chunk in iter_chunks(encoded.payloads, chunk_bytes):
        assert len(chunk) <= chunk_bytes
        assembler.write(chunk)
    out = assembler.tensors()
    # Assert
    assert list(out) == list(tensors)
    for name, tensor in tensors.items():
        assert out[name].dtype == tensor.dtype
        assert torch.equal(out[name], tensor)


def test_chunks_are_full_size_except_the_last() -> None:
    encoded = encode_tensors({"a": torch.zeros(1000), "b": torch.zeros(10)})
    sizes = [len(c) for c in iter_chunks(encoded.payloads, 1024)]
    assert sizes == [1024, 1024, 1024, 1000 * 4 + 40 - 3 * 1024]


def test_received_tensors_are_views_of_one_buffer() -> None:
    encoded = encode_tensors({"a": torch.ones(4), "b": torch.ones(4)})
    assembler = Assembler(encoded.metas, max_bytes=1 << 20)
    for chunk in iter_chunks(encoded.payloads):
        assembler.write(chunk)
    out = assembler.tensors()
    # Both live in the preallocated buffer, each at a 64-byte aligned offset: no copies.
    assert out["b"].data_ptr() - out["a"].data_ptr() == 64
    assert out["a"].data_ptr() % 64 == 0


def test_overflow_and_truncation_are_rejected() -> None:
    encoded = encode_tensors({"a": torch.ones(4)})
    assembler = Assembler(encoded.metas, max_bytes=1 << 20)
    with pytest.raises(InvalidSpec, match="more than the 16 payload bytes"):
        assembler.write(b"x" * 17)
    assembler.write(b"x" * 8)
    with pytest.raises(InvalidSpec, match="after 8 of 16 payload bytes"):
        assembler.tensors()


def test_declared_size_over_limit_is_refused_before_allocating() -> None:
    encoded = encode_tensors({"a": torch.ones(1000)})
    with pytest.raises(QuotaExceeded, match="4000 bytes exceeds the limit of 100 bytes"):
        Assembler(encoded.metas, max_bytes=100)


def test_tensor_table_round_trips_through_protobuf() -> None:
    encoded = encode_tensors(_tensors(), "fp16")
    metas = metas_from_specs(specs_from_metas(encoded.metas))
    assert tuple(metas) == encoded.metas
    assert metas[3].codec == "none"  # integer tensors travel raw


def test_table_with_wrong_length_for_fixed_size_codec_is_rejected() -> None:
    specs = specs_from_metas(encode_tensors({"a": torch.ones(4)}).metas)
    specs[0].byte_length = 15
    with pytest.raises(InvalidSpec, match="must be 16 bytes, header says 15"):
        metas_from_specs(specs)


def test_a_variable_length_payload_cannot_declare_more_than_8_bytes_per_element() -> None:
    specs = specs_from_metas(encode_tensors({"a": torch.ones(10)}, "topk").metas)
    specs[0].byte_length = 80
    assert metas_from_specs(specs)[0].byte_length == 80
    specs[0].byte_length = 88
    with pytest.raises(InvalidSpec, match="has at most 80 bytes, header says 88"):
        metas_from_specs(specs)


def test_repeated_names_are_rejected() -> None:
    specs = specs_from_metas(encode_tensors({"a": torch.ones(4)}).metas)
    with pytest.raises(InvalidSpec, match="empty or repeated"):
        metas_from_specs([specs[0], specs[0]])


# -- framing of chunk messages -----------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1, 100, 200, 20_000, 1 << 20])
def test_chunk_frames_are_the_protobuf_serialisation_of_each_chunk(chunk_bytes: int) -> None:
    # Prepare: payload lengths give 1-, 2- and 3-byte length varints.
    encoded = encode_tensors(_tensors())
    # Execute
    frames = list(chunk_frames(encoded.payloads, chunk_bytes))
    # Assert
    expected = [
        aggregator_pb2.GradientFrame(chunk=chunk).SerializeToString()
        for chunk in iter_chunks(encoded.payloads, chunk_bytes)
    ]
    assert frames == expected
    assert [aggregator_pb2.ModelFrame.FromString(f).chunk for f in frames] == list(
        iter_chunks(encoded.payloads, chunk_bytes)
    )


def test_parse_chunk_frame_returns_a_view_of_the_chunk_inside_the_message() -> None:
    data = aggregator_pb2.GradientFrame(chunk=b"x" * 300).SerializeToString()
    view = parse_chunk_frame(data)
    assert view is not None and view.obj is data
    assert view.tobytes() == b"x" * 300


@pytest.mark.parametrize(
    "data",
    [
        aggregator_pb2.GradientFrame(
            header=aggregator_pb2.ContributionHeader(job_id="j")
        ).SerializeToString(),
        # A chunk followed by another field: valid protobuf, left to the protobuf parser.
        aggregator_pb2.GradientFrame(chunk=b"abc").SerializeToString() + b"\x08\x01",
        b"\x12\x05abc",  # length beyond the message
        b"\x12",
        b"",
    ],
)
def test_parse_chunk_frame_leaves_anything_else_to_protobuf(data: bytes) -> None:
    assert parse_chunk_frame(data) is None


def test_frame_parser_and_chunks_after_header_accept_parsed_and_raw_frames() -> None:
    # Prepare
    encoded = encode_tensors(_tensors())
    header = aggregator_pb2.ModelHeader(job_id="j", tensors=specs_from_metas(encoded.metas))
    wire = [aggregator_pb2.ModelFrame(header=header).SerializeToString()]
    wire += list(chunk_frames(encoded.payloads, 100))
    parse = frame_parser(aggregator_pb2.ModelFrame.FromString)
    # Execute
    frames = iter([parse(data) for data in wire])
    first = next(frames)
    out = assemble(
        metas_from_specs(first.header.tensors), chunks_after_header(frames), max_bytes=1 << 20
    )
    # Assert
    for name, tensor in _tensors().items():
        assert torch.equal(out.tensors()[name], tensor)
    with pytest.raises(InvalidSpec, match="exactly one header"):
        list(chunks_after_header(iter([b"ab", aggregator_pb2.ModelFrame(header=header)])))


def test_bytes_by_codec_attributes_a_stream_cut_short() -> None:
    encoded = encode_tensors(_tensors(), "fp16")
    lengths = {m.name: m.byte_length for m in encoded.metas}
    assert bytes_by_codec(encoded.metas) == {
        "fp16": lengths["w"] + lengths["b"] + lengths["half"],
        "none": lengths["steps"],
    }
    assert bytes_by_codec(encoded.metas, lengths["w"] + 3) == {"fp16": lengths["w"] + 3}
    assert bytes_by_codec(encoded.metas, 0) == {}


# -- receiving: recycled buffers, finite checks, value sinks ----------------------------------


def test_all_finite_is_exact_including_sums_that_overflow() -> None:
    big = torch.full((8,), 3e38)
    assert all_finite(big)  # the fast sum overflows; the exact test decides
    assert all_finite(torch.zeros(0))
    assert all_finite(torch.full((4,), 60000.0, dtype=torch.float16))
    assert all_finite(torch.randn(1000, dtype=torch.bfloat16))
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            values = torch.ones(1000, dtype=dtype)
            values[617] = bad
            assert not all_finite(values), (bad, dtype)


def test_a_non_finite_value_is_refused_at_the_chunk_that_carries_it() -> None:
    # Prepare: a NaN in the third 400-byte chunk of "w".
    tensors = _tensors()
    tensors["w"].view(-1)[250] = float("nan")
    encoded = encode_tensors(tensors)
    assembler = Assembler(encoded.metas, max_bytes=1 << 20, check_finite=True)
    chunks = iter_chunks(encoded.payloads, 400)
    # Execute / Assert
    assembler.write(next(chunks))
    assembler.write(next(chunks))
    with pytest.raises(NonFinite, match="tensor 'w' has non-finite values") as info:
        assembler.write(next(chunks))
    assert info.value.tensor == "w"
    assert assembler.received_bytes == 1200


@pytest.mark.parametrize("chunk_bytes", [1, 3, 7, 64])
def test_values_split_across_chunks_are_checked_once_complete(chunk_bytes: int) -> None:
    # A float64 tensor after 3 float32 values starts mid-word: chunks split its elements.
    tensors = {"a": torch.ones(3), "b": torch.tensor([1.0, float("inf"), 2.0], dtype=torch.float64)}
    encoded = encode_tensors(tensors)
    assembler = Assembler(encoded.metas, max_bytes=1 << 20, check_finite=True)
    with pytest.raises(NonFinite, match="'b'"):
        for chunk in iter_chunks(encoded.payloads, chunk_bytes):
            assembler.write(chunk)
    # The infinity is b[1]: bytes 12 + 8 .. 12 + 16 of the payload.
    assert 28 <= assembler.received_bytes < 28 + chunk_bytes


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8", "topk"])
def test_decoded_payloads_of_lossy_codecs_are_checked(codec: str) -> None:
    tensors = {"w": torch.ones(50)}
    tensors["w"][7] = float("inf")
    encoded = encode_tensors(tensors, codec)
    assembler = Assembler(encoded.metas, max_bytes=1 << 20, check_finite=True)
    for chunk in iter_chunks(encoded.payloads):
        assembler.write(chunk)
    with pytest.raises(NonFinite):
        assembler.tensors()


@pytest.mark.parametrize("chunk_bytes", [1, 5, 7, 64, 1 << 20])
def test_the_sink_sees_every_raw_floating_element_once_in_order(chunk_bytes: int) -> None:
    # Prepare
    tensors = _tensors()
    encoded = encode_tensors(tensors)
    seen: dict[int, list[float]] = {}

    def sink(index: int, start: int, values: torch.Tensor) -> None:
        got = seen.setdefault(index, [])
        assert start == len(got)
        got.extend(values.double().tolist())
        values.mul_(2)  # a sink may rewrite what it is given

    assembler = Assembler(encoded.metas, max_bytes=1 << 20, sink=sink)
    # Execute
    for chunk in iter_chunks(encoded.payloads, chunk_bytes):
        assembler.write(chunk)
    out = assembler.tensors()
    # Assert: floating raw tensors were sunk (and doubled); the integer one was not.
    names = [m.name for m in encoded.metas]
    assert set(seen) == {names.index(n) for n in ("w", "b", "half")}
    for name in ("w", "b", "half"):
        assert seen[names.index(name)] == tensors[name].double().reshape(-1).tolist()
        assert torch.equal(out[name], tensors[name] * 2)
    assert torch.equal(out["steps"], tensors["steps"])


def test_a_recycled_buffer_is_received_into() -> None:
    encoded = encode_tensors({"a": torch.ones(4), "b": torch.ones(4)})
    buffer = torch.zeros(1000, dtype=torch.uint8)
    assembler = Assembler(encoded.metas, max_bytes=1 << 20, buffer=buffer)
    for chunk in iter_chunks(encoded.payloads):
        assembler.write(chunk)
    assert assembler.tensors()["a"].data_ptr() == buffer.data_ptr()
    assert buffer_bytes(encoded.metas) == 128
    with pytest.raises(InvalidSpec, match="at least 128 bytes"):
        Assembler(encoded.metas, max_bytes=1 << 20, buffer=torch.zeros(100, dtype=torch.uint8))
    with pytest.raises(InvalidSpec, match="aligned"):
        Assembler(encoded.metas, max_bytes=1 << 20, buffer=buffer[1:])


def test_encoding_through_error_feedback_keeps_what_the_codec_dropped() -> None:
    # Prepare
    generator = torch.Generator().manual_seed(1)
    gradient = {"w": torch.randn(100, generator=generator), "steps": torch.arange(3)}
    feedback = ErrorFeedback()
    # Execute
    encoded = encode_tensors(gradient, "topk", feedback=feedback)
    # Assert: the residual is exactly what top-k left out; integer tensors bypass feedback.
    sent = TopKCodec().decode(encoded.payloads[0], torch.float32, (100,))
    residual = feedback.residual("w")
    assert residual is not None
    assert torch.allclose(sent + residual, gradient["w"])
    assert feedback.residual("steps") is None
    assert [m.codec for m in encoded.metas] == ["topk", "none"]
