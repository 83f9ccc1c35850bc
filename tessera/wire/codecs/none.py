"""The identity codec: a tensor's own bytes, shared rather than copied in both directions."""

from __future__ import annotations

from typing import ClassVar

import torch

from tessera.wire.codecs.base import bytes_as_tensor, check_payload_length, numel, tensor_bytes

__all__ = ["NoneCodec"]


class NoneCodec:
    """Sends the raw bytes of a tensor of any supported dtype.

    ``encode`` returns a view of a contiguous tensor's memory and ``decode`` a view of the payload
    buffer (copied only if the buffer is read-only or misaligned for the dtype).
    """

    name: ClassVar[str] = "none"
    wire_id: ClassVar[int] = 1

    def encode(self, tensor: torch.Tensor) -> memoryview:
        """Return the tensor's bytes, sharing its memory when it is contiguous and on the CPU."""
        return tensor_bytes(tensor)

    def decode(
        self, payload: memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Return a tensor viewing the payload's bytes.

        Raises:
            InvalidSpec: if the payload length is not ``numel * dtype.itemsize``.
        """
        check_payload_length(self.name, payload, shape, self.encoded_size(dtype, shape))
        return bytes_as_tensor(payload, dtype).reshape(shape)

    def encoded_size(self, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
        """Return ``numel * dtype.itemsize``."""
        return numel(shape) * dtype.itemsize

    def estimate_ratio(self, dtype: torch.dtype, shape: tuple[int, ...]) -> float:
        """Return 1.0."""
        return 1.0
