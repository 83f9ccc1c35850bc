"""Stream framing for tensors: a table of ``TensorMeta`` then raw payload chunks (pure).

Sender side: ``encode_tensors`` encodes each tensor with a codec (zero-copy for ``none``; through
a worker's ``ErrorFeedback`` for lossy codecs) and ``iter_chunk_parts`` cuts the concatenated
payloads into chunks of ``CHUNK_BYTES`` as memoryview slices, never materialising the payload;
each chunk is copied once, into the ``bytes`` of its message (``iter_chunks`` here, or
``tessera.wire.stream.chunk_frames``, which writes the message framing in the same copy).

Receiver side: ``Assembler`` preallocates one buffer for the declared table (or takes a
recycled one), writes each chunk in place and views the tensors out of it at 64-byte aligned
offsets. With ``check_finite`` it checks each chunk's raw floating values as it lands, while
they are still in cache, so a contribution carrying NaN or infinity is refused at the chunk
that carries it; payloads of other codecs are checked once decoded. A ``ValueSink`` sees the
same values next, element-exact even where a chunk ends inside an element; the aggregator's
mean uses one to fold a contribution as it arrives (``services.aggregator.ingest``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tessera.common.errors import InvalidSpec, QuotaExceeded
from tessera.wire.codecs import Codec, ErrorFeedback, NoneCodec, TensorMeta, codec_for, get_codec

__all__ = [
    "ALIGN",
    "CHUNK_BYTES",
    "Assembler",
    "EncodedTensors",
    "NonFinite",
    "ValueSink",
    "all_finite",
    "buffer_bytes",
    "bytes_by_codec",
    "decoder",
    "encode_tensors",
    "iter_chunk_parts",
    "iter_chunks",
]

CHUNK_BYTES = 1 << 20
# Each tensor starts at a multiple of this in the receive buffer so typed views are aligned.
ALIGN = 64


ValueSink = Callable[[int, int, torch.Tensor], None]
"""Receives raw floating values as they land: (tensor's index in the table, index of the first
element, a 1-D view of the newly complete elements in the receive buffer)."""


@functools.cache
def decoder(name: str) -> Codec:
    """The codec named ``name`` with default options, shared: decoding needs no options.

    Building a codec (``get_codec``) checks its options by introspection, which costs more
    than receiving a chunk; streams decode with these shared instances instead.

    Raises:
        InvalidSpec: no codec has this name.
    """
    return get_codec(name)


class NonFinite(InvalidSpec):
    """A received tensor holds NaN or an infinity.

    Attributes:
        tensor: the name of the offending tensor.
    """

    def __init__(self, tensor: str) -> None:
        super().__init__(f"tensor {tensor!r} has non-finite values")
        self.tensor = tensor


@dataclass(frozen=True)
class EncodedTensors:
    """Tensors encoded for the wire, in table order."""

    metas: tuple[TensorMeta, ...]
    payloads: tuple[memoryview, ...]

    @property
    def total_bytes(self) -> int:
        """Sum of the payload lengths."""
        return sum(m.byte_length for m in self.metas)


def encode_tensors(
    tensors: Mapping[str, torch.Tensor],
    codec: str = "none",
    *,
    feedback: ErrorFeedback | None = None,
) -> EncodedTensors:
    """Encode every tensor with ``codec`` (non-floating tensors always travel raw).

    Args:
        tensors: the tensors, in the order the table lists them.
        codec: a codec name (``tessera.wire.codecs.CODECS``).
        feedback: if given and the codec is lossy, floating tensors go through
            ``feedback.compress``, which adds the residual kept under each tensor's name and
            keeps what the codec dropped for the next call.

    Raises:
        InvalidSpec: unknown codec or unsupported dtype.
    """
    chosen = get_codec(codec)
    metas: list[TensorMeta] = []
    payloads: list[memoryview] = []
    for name, tensor in tensors.items():
        used = codec_for(chosen, tensor.dtype)
        if feedback is not None and not isinstance(used, NoneCodec):
            payload = feedback.compress(name, tensor, used)
        else:
            payload = used.encode(tensor.detach())
        metas.append(TensorMeta(name, tensor.dtype, tuple(tensor.shape), used.name, payload.nbytes))
        payloads.append(payload)
    return EncodedTensors(tuple(metas), tuple(payloads))


def iter_chunk_parts(
    payloads: Iterable[memoryview], chunk_bytes: int = CHUNK_BYTES
) -> Iterator[list[memoryview]]:
    """Yield the concatenated payloads as chunks of ``chunk_bytes``, each a list of views.

    Every chunk but the last holds exactly ``chunk_bytes``; a chunk spanning the end of one
    payload and the start of the next has one view of each. Nothing is copied.
    """
    if chunk_bytes < 1:
        raise InvalidSpec(f"chunk_bytes ({chunk_bytes}) must be >= 1")
    pending: list[memoryview] = []
    pending_bytes = 0
    for payload in payloads:
        view = payload.cast("B") if payload.format != "B" or payload.ndim != 1 else payload
        offset = 0
        size = view.nbytes
        while offset < size:
            take = min(chunk_bytes - pending_bytes, size - offset)
            pending.append(view[offset : offset + take])
            pending_bytes += take
            offset += take
            if pending_bytes == chunk_bytes:
                yield pending
                pending, pending_bytes = [], 0
    if pending_bytes:
        yield pending


def iter_chunks(payloads: Iterable[memoryview], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the concatenated payloads as ``bytes`` chunks of ``chunk_bytes`` (last shorter).

    Each chunk is copied exactly once, into the ``bytes`` a message needs.
    """
    for parts in iter_chunk_parts(payloads, chunk_bytes):
        yield parts[0].tobytes() if len(parts) == 1 else b"".join(parts)


def bytes_by_codec(metas: Sequence[TensorMeta], upto: int | None = None) -> dict[str, int]:
    """Return how many of the first ``upto`` payload bytes (default: all) each codec produced.

    This is how sent and received byte counters attribute a stream that was cut short, and
    streams whose integer tensors travel with ``none`` while the rest use a lossy codec.
    """
    remaining = math.inf if upto is None else upto
    out: dict[str, int] = {}
    for meta in metas:
        if remaining <= 0:
            break
        take = int(min(meta.byte_length, remaining))
        out[meta.codec] = out.get(meta.codec, 0) + take
        remaining -= take
    return {codec: count for codec, count in out.items() if count}


def buffer_bytes(metas: Sequence[TensorMeta]) -> int:
    """Return the size of the receive buffer for ``metas`` (payloads at ``ALIGN`` offsets)."""
    return sum(-(-m.byte_length // ALIGN) * ALIGN for m in metas)


def all_finite(tensor: torch.Tensor) -> bool:
    """Return whether every value of a floating tensor is finite.

    One vectorised sum decides the common case: NaN and infinities propagate through a sum, so
    a finite sum means finite values. Only a non-finite sum, which finite values reach solely by
    overflowing, pays for the exact element-wise test.
    """
    if tensor.numel() == 0:
        return True
    accumulate = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    if math.isfinite(float(tensor.sum(dtype=accumulate))):
        return True
    return bool(torch.isfinite(tensor).all())


class Assembler:
    """Receives the payload of a declared tensor table into one preallocated buffer.

    Args:
        metas: the table, in wire order.
        max_bytes: the largest payload accepted; checked before anything is allocated.
        buffer: a contiguous ``uint8`` tensor of at least ``buffer_bytes(metas)`` bytes to
            receive into instead of allocating (a recycled buffer: no fresh pages to fault in).
        check_finite: check floating values as they arrive (raw payloads, per chunk) or when
            decoded (other codecs), raising ``NonFinite``.
        sink: called for the elements of raw (``none``) floating tensors that each chunk
            completes, after they are checked, in order and exactly once per element. It may
            rewrite them in place; ``tensors`` then returns the rewritten values.

    Raises (from the constructor, ``write`` and ``tensors``):
        QuotaExceeded: the table declares more than ``max_bytes``.
        InvalidSpec: chunks overflow the table, or stop before it is complete, or a payload
            does not decode, or ``buffer`` is unsuitable.
        NonFinite: with ``check_finite``, a tensor holds NaN or an infinity.
    """

    def __init__(
        self,
        metas: Sequence[TensorMeta],
        *,
        max_bytes: int,
        buffer: torch.Tensor | None = None,
        check_finite: bool = False,
        sink: ValueSink | None = None,
    ) -> None:
        total = sum(m.byte_length for m in metas)
        if total > max_bytes:
            raise QuotaExceeded(f"payload of {total} bytes exceeds the limit of {max_bytes} bytes")
        self.metas = tuple(metas)
        self.expected_bytes = total
        self.received_bytes = 0
        self._check_finite = check_finite
        self._sink = sink
        # (wire start, wire end, buffer start) per tensor, in wire order.
        self._spans: list[tuple[int, int, int]] = []
        wire = placed = 0
        for meta in self.metas:
            self._spans.append((wire, wire + meta.byte_length, placed))
            wire += meta.byte_length
            placed += -(-meta.byte_length // ALIGN) * ALIGN
        if buffer is None:
            buffer = torch.empty(placed, dtype=torch.uint8)
        elif (
            buffer.dtype != torch.uint8
            or buffer.dim() != 1
            or not buffer.is_contiguous()
            or buffer.numel() < placed
            or buffer.data_ptr() % ALIGN
        ):
            raise InvalidSpec(
                f"a receive buffer must be a contiguous, {ALIGN}-byte aligned uint8 tensor of "
                f"at least {placed} bytes"
            )
        self.buffer = buffer
        self._array = buffer.numpy()
        self._span_index = 0
        # Raw floating tensors are checked and sunk chunk by chunk: bytes done so far, per
        # tensor (-1: not tracked).
        track = check_finite or sink is not None
        self._done = [
            0 if track and m.codec == "none" and m.dtype.is_floating_point else -1
            for m in self.metas
        ]

    def write(self, chunk: bytes | memoryview) -> None:
        """Copy the next chunk into place (and check its values, with ``check_finite``).

        Raises:
            InvalidSpec: the chunk goes beyond the declared payload.
            NonFinite: with ``check_finite``, the chunk completes a non-finite value.
        """
        source = np.frombuffer(chunk, dtype=np.uint8)
        size = source.size
        if self.received_bytes + size > self.expected_bytes:
            raise InvalidSpec(
                f"stream carries more than the {self.expected_bytes} payload bytes its header "
                "declares"
            )
        first = self._span_index
        offset = 0
        while offset < size:
            wire_start, wire_end, placed = self._spans[self._span_index]
            into = placed + self.received_bytes - wire_start
            take = min(size - offset, wire_end - self.received_bytes)
            self._array[into : into + take] = source[offset : offset + take]
            offset += take
            self.received_bytes += take
            if self.received_bytes == wire_end:
                self._span_index += 1
        last = self._span_index
        # Zero-length tensors at the end of the table occupy no bytes.
        while (
            self._span_index < len(self._spans)
            and self._spans[self._span_index][1] == self.received_bytes
            and self._spans[self._span_index][0] == self.received_bytes
        ):
            self._span_index += 1
        for index in range(first, min(last + 1, len(self._spans))):
            if self._done[index] >= 0:
                self._landed(index)

    def _landed(self, index: int) -> None:
        done = self._done[index]
        meta = self.metas[index]
        wire_start, wire_end, placed = self._spans[index]
        itemsize = meta.dtype.itemsize
        ready = min(self.received_bytes, wire_end) - wire_start
        # A chunk may end inside an element (a float64 after an odd number of float32s).
        ready -= ready % itemsize
        if ready <= done:
            return
        values = self.buffer[placed + done : placed + ready].view(meta.dtype)
        if self._check_finite and not all_finite(values):
            raise NonFinite(meta.name)
        if self._sink is not None:
            self._sink(index, done // itemsize, values)
        self._done[index] = ready

    @property
    def complete(self) -> bool:
        """Whether every declared byte has arrived."""
        return self.received_bytes == self.expected_bytes

    def received_by_codec(self) -> dict[str, int]:
        """Payload bytes received so far, by the codec of the tensor they belong to."""
        return bytes_by_codec(self.metas, self.received_bytes)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Decode the tensors; ``none``-coded ones are views into the receive buffer.

        Raises:
            InvalidSpec: the payload is incomplete or does not decode.
            NonFinite: with ``check_finite``, a decoded tensor holds NaN or an infinity.
        """
        if not self.complete:
            raise InvalidSpec(
                f"stream ended after {self.received_bytes} of {self.expected_bytes} payload bytes"
            )
        out: dict[str, torch.Tensor] = {}
        for meta, (_start, _end, placed) in zip(self.metas, self._spans, strict=True):
            payload = self.buffer[placed : placed + meta.byte_length].numpy().data
            tensor = decoder(meta.codec).decode(payload, meta.dtype, meta.shape)
            # Raw payloads were checked chunk by chunk in ``write``.
            if self._check_finite and meta.codec != "none" and not all_finite(tensor):
                raise NonFinite(meta.name)
            out[meta.name] = tensor
        return out
