"""bfloat16: float32's exponent range with an 8-bit significand (relative error 2**-8).

Kalamkar et al., "A Study of BFLOAT16 for Deep Learning Training", 2019 (arXiv:1905.12322).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from tessera.wire.codecs.base import CastCodec

__all__ = ["Bf16Codec"]


class Bf16Codec(CastCodec):
    """Sends floating tensors as bfloat16."""

    name: ClassVar[str] = "bf16"
    wire_id: ClassVar[int] = 3
    wire_dtype: ClassVar[torch.dtype] = torch.bfloat16
