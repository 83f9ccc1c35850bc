"""Stream framing for tensors: a table of ``TensorMeta`` then raw payload chunks (pure).

Sender side: ``encode_tensors`` encodes each tensor with a codec (zero-copy for ``none``) and
``iter_chunks`` cuts the concatenated payloads into chunks of about ``CHUNK_BYTES`` without ever
materialising the whole payload. Receiver side: ``Assembler`` preallocates one buffer for the
declared table, writes each chunk in place and views the tensors out of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from tessera.common.errors import InvalidSpec, QuotaExceeded
from tessera.wire.codecs import TensorMeta, get_codec

__all__ = ["CHUNK_BYTES", "Assembler", "EncodedTensors", "encode_tensors", "iter_chunks"]

CHUNK_BYTES = 1 << 20
# Each tensor starts at a multiple of this in the receive buffer so typed views are aligned.
_ALIGN = 64


@dataclass(frozen=True)
class EncodedTensors:
    """Tensors encoded for the wire, in table order."""

    metas: tuple[TensorMeta, ...]
    payloads: tuple[memoryview, ...]

    @property
    def total_bytes(self) -> int:
        """Sum of the payload lengths."""
        return sum(m.byte_length for m in self.metas)


def encode_tensors(tensors: Mapping[str, torch.Tensor], codec: str = "none") -> EncodedTensors:
    """Encode every tensor with ``codec`` (non-floating tensors always travel raw).

    Raises:
        InvalidSpec: unknown codec or unsupported dtype.
    """
    chosen = get_codec(codec)
    raw = get_codec("none")
    metas: list[TensorMeta] = []
    payloads: list[memoryview] = []
    for name, tensor in tensors.items():
        used = chosen if tensor.is_floating_point() else raw
        payload = used.encode(tensor.detach())
        metas.append(TensorMeta(name, tensor.dtype, tuple(tensor.shape), used.name, payload.nbytes))
        payloads.append(payload)
    return EncodedTensors(tuple(metas), tuple(payloads))


def iter_chunks(payloads: Iterable[memoryview], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the concatenated payloads as chunks of ``chunk_bytes`` (the last may be shorter).

    Slices are views; each chunk is copied exactly once, into the ``bytes`` a message needs.
    """
    pending: list[memoryview] = []
    pending_bytes = 0
    for payload in payloads:
        view = payload.cast("B") if payload.format != "B" else payload
        offset = 0
        while offset < view.nbytes:
            take = min(chunk_bytes - pending_bytes, view.nbytes - offset)
            pending.append(view[offset : offset + take])
            pending_bytes += take
            offset += take
            if pending_bytes == chunk_bytes:
                yield pending[0].tobytes() if len(pending) == 1 else b"".join(pending)
                pending, pending_bytes = [], 0
    if pending_bytes:
        yield b"".join(pending)


class Assembler:
    """Receives the payload of a declared tensor table into one preallocated buffer.

    Raises (from the constructor, ``write`` and ``tensors``):
        QuotaExceeded: the table declares more than ``max_bytes``.
        InvalidSpec: chunks overflow the table, or stop before it is complete, or a payload
            does not decode.
    """

    def __init__(self, metas: Sequence[TensorMeta], *, max_bytes: int) -> None:
        total = sum(m.byte_length for m in metas)
        if total > max_bytes:
            raise QuotaExceeded(f"payload of {total} bytes exceeds the limit of {max_bytes} bytes")
        self.metas = tuple(metas)
        self.expected_bytes = total
        self.received_bytes = 0
        # (wire start, wire end, buffer start) per tensor, in wire order.
        self._spans: list[tuple[int, int, int]] = []
        wire = placed = 0
        for meta in self.metas:
            self._spans.append((wire, wire + meta.byte_length, placed))
            wire += meta.byte_length
            placed += -(-meta.byte_length // _ALIGN) * _ALIGN
        self._buffer = torch.empty(placed, dtype=torch.uint8)
        self._view = self._buffer.numpy().data
        self._span_index = 0

    def write(self, chunk: bytes) -> None:
        """Copy the next chunk into place."""
        if self.received_bytes + len(chunk) > self.expected_bytes:
            raise InvalidSpec(
                f"stream carries more than the {self.expected_bytes} payload bytes its header "
                "declares"
            )
        source = memoryview(chunk)
        while source.nbytes:
            wire_start, wire_end, placed = self._spans[self._span_index]
            into = placed + self.received_bytes - wire_start
            take = min(source.nbytes, wire_end - self.received_bytes)
            self._view[into : into + take] = source[:take]
            source = source[take:]
            self.received_bytes += take
            if self.received_bytes == wire_end:
                self._span_index += 1
        # Zero-length tensors at the end of the table occupy no bytes.
        while (
            self._span_index < len(self._spans)
            and self._spans[self._span_index][1] == self.received_bytes
            and self._spans[self._span_index][0] == self.received_bytes
        ):
            self._span_index += 1

    @property
    def complete(self) -> bool:
        """Whether every declared byte has arrived."""
        return self.received_bytes == self.expected_bytes

    def tensors(self) -> dict[str, torch.Tensor]:
        """Decode the tensors; ``none``-coded ones are views into the receive buffer."""
        if not self.complete:
            raise InvalidSpec(
                f"stream ended after {self.received_bytes} of {self.expected_bytes} payload bytes"
            )
        out: dict[str, torch.Tensor] = {}
        for meta, (_start, _end, placed) in zip(self.metas, self._spans, strict=True):
            payload = self._view[placed : placed + meta.byte_length]
            out[meta.name] = get_codec(meta.codec).decode(payload, meta.dtype, meta.shape)
        return out
