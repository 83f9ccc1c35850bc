"""Protobuf side of tensor streams: tensor tables and chunk frames.

``specs_from_metas`` and ``metas_from_specs`` convert tensor tables to and from the
``TensorSpec`` messages of a stream header (validating what a peer sent).

Chunk frames are the ``GradientFrame``/``ModelFrame`` messages that carry payload bytes in their
``chunk`` field. Building one with protobuf costs three copies of the chunk (into the message,
into the serialised bytes, and the slice before); ``chunk_frames`` writes the serialised message
directly, the field's tag and length then the payload, in the one copy gRPC needs anyway.
``parse_chunk_frame`` is its reverse on the receiving side: it returns a view of the chunk inside
the received message instead of a copy, and leaves anything else to protobuf. Both are exact
protobuf encodings, so either side may use the generated classes instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from tessera.common.errors import InvalidSpec
from tessera.v1 import tensor_pb2
from tessera.wire.codecs import Codec, TensorMeta, codec_by_wire_id, dtype_from_name, dtype_name
from tessera.wire.frames import CHUNK_BYTES, Assembler, decoder, iter_chunk_parts

__all__ = [
    "CHUNK_FIELD",
    "MAX_BYTES_PER_ELEMENT",
    "MAX_DIMS",
    "MAX_TENSORS",
    "assemble",
    "chunk_frames",
    "chunks_after_header",
    "frame_parser",
    "metas_from_specs",
    "parse_chunk_frame",
    "specs_from_metas",
]

# Far beyond any real model; bounds what a header alone can make a receiver allocate.
MAX_TENSORS = 100_000
MAX_DIMS = 8
# No codec spends more than this per element (top-k: an int32 index and a float32 value); it
# bounds what a header declaring a variable-length payload can make a receiver allocate.
MAX_BYTES_PER_ELEMENT = 8
# ``bytes chunk = 2`` in both GradientFrame and ModelFrame.
CHUNK_FIELD = 2
_LENGTH_DELIMITED = 2


@functools.cache
def _codec_for_wire_id(wire_id: int) -> Codec:
    # Shared instances: building a codec checks its options by introspection, per call.
    return codec_by_wire_id(wire_id)


def specs_from_metas(metas: Sequence[TensorMeta]) -> list[tensor_pb2.TensorSpec]:
    """Tensor table for a stream header."""
    return [
        tensor_pb2.TensorSpec(
            name=m.name,
            dtype=dtype_name(m.dtype),
            shape=list(m.shape),
            codec=decoder(m.codec).wire_id,  # type: ignore[arg-type]
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
            raise InvalidSpec(
                f"tensor {spec.name!r} has {len(spec.shape)} dimensions; at most {MAX_DIMS}"
            )
        codec = _codec_for_wire_id(int(spec.codec))
        dtype = dtype_from_name(spec.dtype)
        shape = tuple(int(d) for d in spec.shape)
        expected = codec.encoded_size(dtype, shape)
        if expected is not None and expected != spec.byte_length:
            raise InvalidSpec(
                f"tensor {spec.name!r}: {codec.name} payload for shape {shape} must be "
                f"{expected} bytes, header says {spec.byte_length}"
            )
        most = MAX_BYTES_PER_ELEMENT * math.prod(shape)
        if expected is None and spec.byte_length > most:
            raise InvalidSpec(
                f"tensor {spec.name!r}: a {codec.name} payload for shape {shape} has at most "
                f"{most} bytes, header says {spec.byte_length}"
            )
        metas.append(TensorMeta(spec.name, dtype, shape, codec.name, int(spec.byte_length)))
    return metas


def assemble(
    metas: Sequence[TensorMeta], chunks: Iterable[bytes | memoryview], *, max_bytes: int
) -> Assembler:
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


def chunks_after_header(
    frames: Iterator[Any], field: str = "chunk"
) -> Iterator[bytes | memoryview]:
    """Yield the payload of each remaining frame; a second header is an error.

    A frame is a message whose ``field`` holds the chunk, or a chunk already taken out of its
    message by ``parse_chunk_frame`` (``bytes`` or ``memoryview``).

    Raises:
        InvalidSpec: a frame other than a chunk.
    """
    for frame in frames:
        if isinstance(frame, bytes | memoryview):
            yield frame
        elif frame.WhichOneof("frame") == field:
            yield getattr(frame, field)
        else:
            raise InvalidSpec("a stream carries exactly one header, as its first message")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def chunk_frames(
    payloads: Iterable[memoryview], chunk_bytes: int = CHUNK_BYTES, field: int = CHUNK_FIELD
) -> Iterator[bytes]:
    """Yield serialised frame messages whose bytes field ``field`` carries each chunk.

    ``chunk_frames(p)`` yields exactly ``GradientFrame(chunk=c).SerializeToString()`` (and
    ``ModelFrame``'s) for each ``c`` in ``iter_chunks(p)``, copying each chunk once.
    """
    tag = _varint(field << 3 | _LENGTH_DELIMITED)
    prefixes: dict[int, bytes] = {}
    for parts in iter_chunk_parts(payloads, chunk_bytes):
        size = sum(part.nbytes for part in parts)
        prefix = prefixes.get(size)
        if prefix is None:
            prefix = prefixes[size] = tag + _varint(size)
        yield b"".join((prefix, *parts))


def parse_chunk_frame(data: bytes, field: int = CHUNK_FIELD) -> memoryview | None:
    """Return a view of the chunk if ``data`` is a frame holding only bytes field ``field``.

    Returns None for anything else (a header, or a chunk encoded with other fields around it),
    which the caller parses with protobuf; both give the same chunk for the same message.
    """
    tag = _varint(field << 3 | _LENGTH_DELIMITED)
    if not data.startswith(tag):
        return None
    length = 0
    shift = 0
    position = len(tag)
    while position < len(data) and shift < 64:
        byte = data[position]
        position += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            if position + length != len(data):
                return None
            return memoryview(data)[position:]
        shift += 7
    return None


def frame_parser(
    from_string: Callable[[bytes], Any], field: int = CHUNK_FIELD
) -> Callable[[bytes], Any]:
    """Return a gRPC deserializer for frame messages that leaves chunks uncopied.

    Args:
        from_string: the message class's parser, e.g. ``ModelFrame.FromString``.
        field: the number of the frame's bytes field that carries chunks.

    Returns:
        A function that returns a ``memoryview`` of the chunk for a chunk frame
        (``parse_chunk_frame``) and ``from_string(data)`` for anything else;
        ``chunks_after_header`` accepts both.
    """

    def parse(data: bytes) -> Any:
        chunk = parse_chunk_frame(data, field)
        return from_string(data) if chunk is None else chunk

    return parse
