"""The codec interface, per-tensor wire metadata, and the byte helpers every codec shares.

A codec turns one tensor into contiguous bytes and back. Everything a decoder needs must follow
from the payload length, the tensor's dtype and its shape, because those (with the name, the
codec id and the byte length) are all a stream header carries (DESIGN.md §4). Bytes are in the
machine's native order; every platform Tessera runs on is little-endian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from tessera.common.errors import InvalidSpec

__all__ = [
    "CastCodec",
    "Codec",
    "TensorMeta",
    "bytes_as_tensor",
    "check_floating",
    "check_payload_length",
    "dtype_from_name",
    "dtype_name",
    "numel",
    "tensor_bytes",
]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "bool": torch.bool,
}
_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in _DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """Return the wire name of a supported dtype (``torch.float32`` -> ``"float32"``).

    Raises:
        InvalidSpec: if the dtype cannot travel on the wire.
    """
    try:
        return _NAMES[dtype]
    except KeyError:
        raise InvalidSpec(
            f"dtype {dtype} cannot be sent; supported dtypes: {', '.join(_DTYPES)}"
        ) from None


def dtype_from_name(name: str) -> torch.dtype:
    """Return the dtype a wire name stands for (``"bfloat16"`` -> ``torch.bfloat16``).

    Raises:
        InvalidSpec: if the name is not one of the supported dtypes.
    """
    try:
        return _DTYPES[name]
    except KeyError:
        raise InvalidSpec(
            f"unknown dtype {name!r}; supported dtypes: {', '.join(_DTYPES)}"
        ) from None


@dataclass(frozen=True)
class TensorMeta:
    """What a stream header says about one tensor.

    Attributes:
        name: the tensor's name, e.g. a parameter name from ``named_parameters()``.
        dtype: the dtype of the tensor before encoding, and of the decoded tensor.
        shape: the tensor's shape; ``()`` for a scalar.
        codec: the name of the codec that produced the payload.
        byte_length: the payload's length in bytes.
    """

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    codec: str
    byte_length: int


class Codec(Protocol):
    """Turns a tensor into contiguous bytes and back.

    Implementations are small, stateless apart from their constructor options, and safe to share
    between threads. ``name`` is what job specs use; ``wire_id`` equals the value of the
    ``tessera.v1.Codec`` proto enum (0 stays "unspecified").
    """

    name: ClassVar[str]
    wire_id: ClassVar[int]

    def encode(self, tensor: torch.Tensor) -> memoryview:
        """Return the encoded tensor as one contiguous byte buffer (format ``"B"``).

        The buffer may share memory with ``tensor``; do not modify the tensor until the bytes
        have been sent.

        Raises:
            InvalidSpec: if the codec cannot encode this tensor (a lossy codec given a
                non-floating tensor, or a tensor too large for the codec's index type).
        """
        ...

    def decode(
        self, payload: memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Return the tensor encoded in ``payload``, with the given dtype and shape.

        The result may share memory with ``payload``; keep the buffer alive and unchanged for as
        long as the tensor is used.

        Raises:
            InvalidSpec: if the payload cannot be a valid encoding of a tensor of this dtype and
                shape (wrong length, out-of-range indices, ...).
        """
        ...

    def encoded_size(self, dtype: torch.dtype, shape: tuple[int, ...]) -> int | None:
        """Return the payload's exact length in bytes, or None if it depends on more than shape.

        Raises:
            InvalidSpec: if the codec cannot encode tensors of this dtype.
        """
        ...

    def estimate_ratio(self, dtype: torch.dtype, shape: tuple[int, ...]) -> float:
        """Return the expected ratio of encoded to raw bytes (1.0 means no compression).

        Raises:
            InvalidSpec: if the codec cannot encode tensors of this dtype.
        """
        ...


def numel(shape: tuple[int, ...]) -> int:
    """Return the number of elements of a tensor of this shape.

    Raises:
        InvalidSpec: if a dimension is negative.
    """
    if any(dim < 0 for dim in shape):
        raise InvalidSpec(f"shape {shape} has a negative dimension")
    return math.prod(shape)


def check_floating(codec: str, dtype: torch.dtype) -> None:
    """Reject a non-floating dtype for a lossy codec.

    Raises:
        InvalidSpec: if ``dtype`` is not a floating-point dtype.
    """
    if not dtype.is_floating_point:
        raise InvalidSpec(
            f"codec {codec!r} applies to floating tensors, got {dtype}; "
            "send other tensors with codec 'none' (encode_tensor does this)"
        )


def check_payload_length(
    codec: str, payload: memoryview, shape: tuple[int, ...], expected: int
) -> None:
    """Reject a payload whose length differs from what the shape implies.

    Raises:
        InvalidSpec: if ``payload.nbytes != expected``.
    """
    if payload.nbytes != expected:
        raise InvalidSpec(
            f"{codec} payload for shape {shape} must be {expected} bytes, got {payload.nbytes}"
        )


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """Return the bytes of a tensor's elements in row-major order, sharing its memory if possible.

    A contiguous CPU tensor is not copied: the view keeps the tensor's storage alive.
    """
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        # An empty tensor's strides are arbitrary, which ``view`` below may reject.
        return memoryview(bytearray())
    # numpy has no bfloat16, and ``view`` to a smaller element size needs at least one dimension.
    return flat.view(torch.uint8).numpy().data


def bytes_as_tensor(payload: memoryview, dtype: torch.dtype) -> torch.Tensor:
    """Return a 1-D tensor of ``dtype`` over the bytes of ``payload``, without copying if possible.

    The payload is copied only when torch cannot alias it: a read-only buffer (torch tensors are
    always writable) or a start address not aligned to the element size. The caller checks that
    the length is a multiple of the element size.
    """
    raw_bytes = payload.cast("B") if payload.format != "B" or payload.ndim != 1 else payload
    if raw_bytes.nbytes == 0:
        return torch.empty(0, dtype=dtype)
    if raw_bytes.readonly:
        raw = torch.frombuffer(bytearray(raw_bytes), dtype=torch.uint8)
    else:
        raw = torch.frombuffer(raw_bytes, dtype=torch.uint8)
    if raw.data_ptr() % dtype.itemsize:
        raw = raw.clone()
    return raw.view(dtype)


class CastCodec:
    """Sends floating tensors as another floating dtype and casts them back on decode.

    Subclasses set ``name``, ``wire_id`` and ``wire_dtype``. Values beyond the wire dtype's
    range become infinite (the aggregator rejects non-finite contributions).
    """

    name: ClassVar[str]
    wire_id: ClassVar[int]
    wire_dtype: ClassVar[torch.dtype]

    def encode(self, tensor: torch.Tensor) -> memoryview:
        """Return the tensor's values cast to ``wire_dtype``, as bytes.

        Raises:
            InvalidSpec: if the tensor is not floating.
        """
        check_floating(self.name, tensor.dtype)
        return tensor_bytes(tensor.detach().to(self.wire_dtype))

    def decode(
        self, payload: memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Return the payload's values cast back to ``dtype``.

        Raises:
            InvalidSpec: if the dtype is not floating or the payload length is wrong.
        """
        expected = self.encoded_size(dtype, shape)
        check_payload_length(self.name, payload, shape, expected)
        return bytes_as_tensor(payload, self.wire_dtype).reshape(shape).to(dtype)

    def encoded_size(self, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
        """Return ``numel * wire_dtype.itemsize``.

        Raises:
            InvalidSpec: if the dtype is not floating.
        """
        check_floating(self.name, dtype)
        return numel(shape) * self.wire_dtype.itemsize

    def estimate_ratio(self, dtype: torch.dtype, shape: tuple[int, ...]) -> float:
        """Return ``wire_dtype.itemsize / dtype.itemsize``.

        Raises:
            InvalidSpec: if the dtype is not floating.
        """
        check_floating(self.name, dtype)
        return self.wire_dtype.itemsize / dtype.itemsize
