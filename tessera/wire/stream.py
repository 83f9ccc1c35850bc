"""Protobuf side of tensor streams: tensor tables to and from ``TensorSpec`` messages."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from tessera.common.errors import InvalidSpec
from tessera.v1 import tensor_pb2
from tessera.wire.codecs import TensorMeta, codec_by_wire_id, dtype_from_name, dtype_name, get_codec
from tessera.wire.frames import Assembler

__all__ = ["assemble", "metas_from_specs", "specs_from_metas"]

# Far beyond any real model; bounds what a header alone can make a receiver allocate.
MAX_TENSORS = 100_000
MAX_DIMS = 8


def specs_from_metas(metas: Sequence[TensorMeta]) -> list[tensor_pb2.TensorSpec]:
    """Tensor table for a stream header."""
    return [
        tensor_pb2.TensorSpec(
            name=m.name,
            dtype=dtype_name(m.dtype),
            shape=list(m.shape),
            codec=get_codec(m.codec).wire_id,  # type: ignore[arg-type]
            byte_length=m.byte_length,
        )
        for m in metas
    ]


def metas_from_specs(specs: Sequence[tensor_pb2.TensorSpec]) -> list[TensorMeta]:
    """Validate a received tensor table.

    Raises:
        InvalidSpec: naming the tensor and the rule it breaks.
    """
    if len(specs) > MAX_TENSORS:
        raise InvalidSpec(f"tensor table has {len(specs)} entries; at most {MAX_TENSORS}")
    metas: list[TensorMeta] = []
    seen: set[str] = set()
    for spec in specs:
        if not spec.name or spec.name in seen:
            raise InvalidSpec(f"tensor name {spec.name!r} is empty or repeated")
        seen.add(spec.name)
        if len(spec.shape) > MAX_DIMS:
            raise InvalidSpec(f"tensor {spec.name!r} has {len(spec.shape)} dimensions; at most 8")
        codec = codec_by_wire_id(int(spec.codec))
        dtype = dtype_from_name(spec.dtype)
        shape = tuple(int(d) for d in spec.shape)
        expected = codec.encoded_size(dtype, shape)
        if expected is not None and expected != spec.byte_length:
            raise InvalidSpec(
                f"tensor {spec.name!r}: {codec.name} payload for shape {shape} must be "
                f"{expected} bytes, header says {spec.byte_length}"
            )
        metas.append(TensorMeta(spec.name, dtype, shape, codec.name, int(spec.byte_length)))
    return metas


def assemble(metas: Sequence[TensorMeta], chunks: Iterable[bytes], *, max_bytes: int) -> Assembler:
    """Feed every chunk into a new ``Assembler`` and check the payload is complete.

    Raises:
        QuotaExceeded: the table declares more than ``max_bytes``.
        InvalidSpec: the chunks do not match the table.
    """
    assembler = Assembler(metas, max_bytes=max_bytes)
    for chunk in chunks:
        assembler.write(chunk)
    if not assembler.complete:
        raise InvalidSpec(
            f"stream ended after {assembler.received_bytes} of {assembler.expected_bytes} "
            "payload bytes"
        )
    return assembler


def chunks_after_header(frames: Iterator[object], field: str = "chunk") -> Iterator[bytes]:
    """Yield the ``chunk`` field of each remaining frame; a second header is an error."""
    for frame in frames:
        if frame.WhichOneof("frame") != field:  # type: ignore[attr-defined]
            raise InvalidSpec("a stream carries exactly one header, as its first message")
        yield getattr(frame, field)
