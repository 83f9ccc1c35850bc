"""8-bit quantisation with one absmax scale per block of elements.

Each block of ``CHUNK`` consecutive elements (row-major) is scaled by ``absmax / 127`` and rounded
to the nearest integer in [-127, 127], so every element's error is at most half its block's
scale. Per-block scales keep one large entry from flattening the resolution of the whole tensor,
as in block-wise quantisation (Dettmers et al., "8-bit Optimizers via Block-wise Quantization",
ICLR 2022; for 8-bit gradient traffic see Dettmers, "8-Bit Approximations for Parallelism in Deep
Learning", ICLR 2016).

Payload: ``ceil(numel / CHUNK)`` float32 scales, then ``numel`` int8 values. The block size is
fixed rather than an option because the header does not carry it. A block holding a NaN or an
infinity decodes to non-finite values, which the aggregator rejects.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from tessera.wire.codecs.base import (
    bytes_as_tensor,
    check_floating,
    check_payload_length,
    numel,
    tensor_bytes,
)

__all__ = ["CHUNK", "Int8Codec"]

CHUNK = 4096
_LEVELS = 127


def _blocks(n: int) -> int:
    return math.ceil(n / CHUNK)


class Int8Codec:
    """Sends floating tensors as int8 values with a float32 scale per block of ``CHUNK``."""

    name: ClassVar[str] = "int8"
    wire_id: ClassVar[int] = 4

    def encode(self, tensor: torch.Tensor) -> memoryview:
        """Return the block scales followed by the quantised values.

        Raises:
            InvalidSpec: if the tensor is not floating.
        """
        check_floating(self.name, tensor.dtype)
        flat = tensor.detach().cpu().reshape(-1)
        n = flat.numel()
        blocks = _blocks(n)
        out = torch.empty(4 * blocks + n, dtype=torch.uint8)
        if n == 0:
            return tensor_bytes(out)
        padded = torch.zeros(blocks * CHUNK, dtype=torch.float32)
        padded[:n] = flat
        grid = padded.view(blocks, CHUNK)
        scales = out[: 4 * blocks].view(torch.float32)
        torch.amax(grid.abs(), dim=1, out=scales)
        scales.div_(_LEVELS)
        inverse = torch.where(scales > 0, scales.reciprocal(), torch.zeros_like(scales))
        grid.mul_(inverse.unsqueeze(1)).round_().clamp_(-_LEVELS, _LEVELS)
        out[4 * blocks :].view(torch.int8).copy_(padded[:n])
        return tensor_bytes(out)

    def decode(
        self, payload: memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Return ``value * scale`` for every element, cast to ``dtype``.

        Raises:
            InvalidSpec: if the dtype is not floating or the payload length is wrong.
        """
        check_payload_length(self.name, payload, shape, self.encoded_size(dtype, shape))
        n = numel(shape)
        blocks = _blocks(n)
        scales = bytes_as_tensor(payload[: 4 * blocks], torch.float32)
        values = bytes_as_tensor(payload[4 * blocks :], torch.int8)
        padded = torch.zeros(blocks * CHUNK, dtype=torch.float32)
        padded[:n] = values
        padded.view(blocks, CHUNK).mul_(scales.unsqueeze(1))
        return padded[:n].reshape(shape).to(dtype)

    def encoded_size(self, dtype: torch.dtype, shape: tuple[int, ...]) -> int:
        """Return ``4 * ceil(numel / CHUNK) + numel``.

        Raises:
            InvalidSpec: if the dtype is not floating.
        """
        check_floating(self.name, dtype)
        n = numel(shape)
        return 4 * _blocks(n) + n

    def estimate_ratio(self, dtype: torch.dtype, shape: tuple[int, ...]) -> float:
        """Return the exact ratio of encoded to raw bytes (that of one full block if empty).

        Raises:
            InvalidSpec: if the dtype is not floating.
        """
        n = numel(shape) or CHUNK
        return self.encoded_size(dtype, (n,)) / (n * dtype.itemsize)
