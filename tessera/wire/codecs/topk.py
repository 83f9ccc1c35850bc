"""Top-k sparsification: keep the ``k`` largest-magnitude entries and send them with their indices.

Sending only the largest entries of a gradient and accumulating the rest locally is due to
Strom, "Scalable Distributed DNN Training Using Commodity GPU Cloud Computing", Interspeech 2015,
and Aji & Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017; Stich,
Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018, prove that it converges when
paired with error feedback (``tessera.wire.codecs.feedback``), which is how workers should use it.

``k = max(1, ceil(ratio * numel))``. Payload: ``k`` int32 indices in ascending order, then ``k``
float32 values. Values travel as float32 so that kept entries of float32, float16 and bfloat16
tensors arrive exactly (float64 entries are rounded to float32). The ratio is the sender's choice
and is not on the wire: the decoder derives ``k`` from the payload length, so ``encoded_size``
returns None.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from tessera.common.errors import InvalidSpec
from tessera.wire.codecs.base import bytes_as_tensor, check_floating, numel, tensor_bytes

__all__ = ["TopKCodec"]

_ENTRY_BYTES = 8
_MAX_NUMEL = 2**31 - 1


class TopKCodec:
    """Sends the ``ceil(ratio * numel)`` largest-magnitude entries of floating tensors.

    Args:
        ratio: the fraction of entries to keep, in (0, 1].

    Raises:
        InvalidSpec: if ``ratio`` is not a number in (0, 1].
    """

    name: ClassVar[str] = "topk"
    wire_id: ClassVar[int] = 5

    def __init__(self, ratio: float = 0.01) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise InvalidSpec(f"topk ratio ({ratio!r}) must be a number in (0, 1]")
        self.ratio = float(ratio)

    def kept(self, n: int) -> int:
        """Return how many of ``n`` entries the encoder keeps."""
        return 0 if n == 0 else min(n, max(1, math.ceil(self.ratio * n)))

    def encode(self, tensor: torch.Tensor) -> memoryview:
        """Return the indices and values of the largest-magnitude entries.

        Raises:
            InvalidSpec: if the tensor is not floating or has more entries than int32 can index.
        """
        check_floating(self.name, tensor.dtype)
        flat = tensor.detach().cpu().reshape(-1)
        n = flat.numel()
        if n > _MAX_NUMEL:
            raise InvalidSpec(f"topk indexes entries with int32; a tensor of {n} is too large")
        k = self.kept(n)
        out = torch.empty(_ENTRY_BYTES * k, dtype=torch.uint8)
        if k:
            indices = flat.abs().topk(k, sorted=False).indices.sort().values
            out[: 4 * k].view(torch.int32).copy_(indices)
            out[4 * k :].view(torch.float32).copy_(flat[indices])
        return tensor_bytes(out)

    def decode(
        self, payload: memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """Return a dense tensor with the sent entries and zeros elsewhere.

        Raises:
            InvalidSpec: if the dtype is not floating, the payload length is not 8 bytes per
                entry for between 1 and ``numel`` entries, or an index is out of range.
        """
        check_floating(self.name, dtype)
        n = numel(shape)
        k, rest = divmod(payload.nbytes, _ENTRY_BYTES)
        if rest or not min(n, 1) <= k <= n:
            raise InvalidSpec(
                f"topk payload for shape {shape} must be 8 bytes per kept entry, between "
                f"{_ENTRY_BYTES * min(n, 1)} and {_ENTRY_BYTES * n} bytes, got {payload.nbytes}"
            )
        out = torch.zeros(n, dtype=dtype)
        if k:
            indices = bytes_as_tensor(payload[: 4 * k], torch.int32).long()
            values = bytes_as_tensor(payload[4 * k :], torch.float32)
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= n:
                raise InvalidSpec(
                    f"topk payload for shape {shape} has index {low if low < 0 else high} "
                    f"outside [0, {n})"
                )
            out[indices] = values.to(dtype)
        return out.reshape(shape)

    def encoded_size(self, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        """Return None: the length depends on the sender's ratio, which is not on the wire.

        Raises:
            InvalidSpec: if the dtype is not floating.
        """
        check_floating(self.name, dtype)
        return None

    def estimate_ratio(self, dtype: torch.dtype, shape: tuple[int, ...]) -> float:
        """Return this encoder's exact ratio (8 bytes per kept entry over the raw bytes).

        Raises:
            InvalidSpec: if the dtype is not floating.
        """
        check_floating(self.name, dtype)
        n = numel(shape)
        if n == 0:
            return self.ratio * _ENTRY_BYTES / dtype.itemsize
        return _ENTRY_BYTES * self.kept(n) / (n * dtype.itemsize)
