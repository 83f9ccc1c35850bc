"""Half precision (IEEE 754 binary16): halves float32 traffic with a relative error of 2**-11.

Magnitudes above 65504 overflow to infinity; use ``bf16`` for tensors with a wide range.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from tessera.wire.codecs.base import CastCodec

__all__ = ["Fp16Codec"]


class Fp16Codec(CastCodec):
    """Sends floating tensors as float16."""

    name: ClassVar[str] = "fp16"
    wire_id: ClassVar[int] = 2
    wire_dtype: ClassVar[torch.dtype] = torch.float16
