"""Error feedback: carry what a lossy codec dropped into the next round instead of losing it.

Seide et al., "1-Bit Stochastic Gradient Descent and its Application to Data-Parallel Distributed
Training of Speech DNNs", Interspeech 2014, introduced the idea; Karimireddy et al., "Error
Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML 2019 (EF-SGD), prove that
with it compressed SGD converges like uncompressed SGD. Each step sends ``C(g + e)`` and keeps
``e' = g + e - C(g + e)``, so the sum of everything sent differs from the sum of all inputs by
exactly the current residual, however lossy the codec.

The state lives on the worker and belongs to one model: one residual per tensor name.
"""

from __future__ import annotations

import torch

from tessera.common.errors import InvalidSpec
from tessera.wire.codecs.base import Codec

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """Per-tensor residuals of a worker's compressed updates.

    Residuals are kept in at least float32, so half-precision tensors do not lose the small
    values feedback exists to accumulate. Not thread-safe: one instance per training loop.
    """

    def __init__(self) -> None:
        self._residuals: dict[str, torch.Tensor] = {}

    def compress(self, name: str, tensor: torch.Tensor, codec: Codec) -> memoryview:
        """Encode ``tensor`` plus the residual stored under ``name``; store the new residual.

        Decode the result with ``codec.decode(payload, tensor.dtype, tuple(tensor.shape))``.

        Raises:
            InvalidSpec: if the tensor is not floating (send those with codec "none", without
                feedback) or its shape differs from the residual stored under ``name``.
        """
        if not tensor.dtype.is_floating_point:
            raise InvalidSpec(
                f"error feedback applies to floating tensors; {name!r} is {tensor.dtype}"
            )
        shape = tuple(tensor.shape)
        accumulate = torch.promote_types(tensor.dtype, torch.float32)
        residual = self._residuals.get(name)
        if residual is None:
            residual = self._residuals[name] = torch.zeros(shape, dtype=accumulate)
        elif tuple(residual.shape) != shape or residual.dtype != accumulate:
            raise InvalidSpec(
                f"{name!r} has shape {shape} and dtype {tensor.dtype}, but its residual has "
                f"shape {tuple(residual.shape)} and dtype {residual.dtype}; call reset({name!r})"
            )
        compensated = residual + tensor.detach().cpu()
        payload = codec.encode(compensated.to(tensor.dtype))
        decoded = codec.decode(payload, tensor.dtype, shape)
        torch.sub(compensated, decoded, out=residual)
        return payload

    def residual(self, name: str) -> torch.Tensor | None:
        """Return the residual stored under ``name`` (what has not been sent yet), if any."""
        return self._residuals.get(name)

    def reset(self, name: str | None = None) -> None:
        """Forget the residual of one tensor, or of all tensors when ``name`` is None."""
        if name is None:
            self._residuals.clear()
        else:
            self._residuals.pop(name, None)
