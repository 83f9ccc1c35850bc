"""Tensor codecs: how tensors become bytes on the wire and back (DESIGN.md §4).

Modules:
    base: the ``Codec`` protocol, ``TensorMeta`` (what a stream header says about a tensor),
        dtype names, and the zero-copy byte helpers the codecs share.
    none: raw bytes, shared with the tensor when sending and with the buffer when receiving.
    fp16, bf16: floating tensors cast to a 16-bit float.
    int8: 8-bit values with a float32 absmax scale per block of 4096 elements.
    topk: the largest-magnitude entries with their int32 indices.
    feedback: ``ErrorFeedback``, the worker-side residuals that make lossy codecs converge.

Codecs are chosen by name (``get_codec("topk", ratio=0.05)``, the name a job spec carries) or by
the ``tessera.v1.Codec`` enum value in a stream header (``codec_by_wire_id``). Lossy codecs only
apply to floating tensors; ``encode_tensor`` sends every other tensor with "none" and returns the
codec it used, which is the one to write in the header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tessera.common.errors import InvalidSpec
from tessera.common.factories import check_options
from tessera.wire.codecs.base import Codec, TensorMeta, dtype_from_name, dtype_name
from tessera.wire.codecs.bf16 import Bf16Codec
from tessera.wire.codecs.feedback import ErrorFeedback
from tessera.wire.codecs.fp16 import Fp16Codec
from tessera.wire.codecs.int8 import Int8Codec
from tessera.wire.codecs.none import NoneCodec
from tessera.wire.codecs.topk import TopKCodec

__all__ = [
    "CODECS",
    "Bf16Codec",
    "Codec",
    "ErrorFeedback",
    "Fp16Codec",
    "Int8Codec",
    "NoneCodec",
    "TensorMeta",
    "TopKCodec",
    "codec_by_wire_id",
    "codec_for",
    "dtype_from_name",
    "dtype_name",
    "encode_tensor",
    "get_codec",
    "register_codec",
]

CODECS: dict[str, Callable[..., Codec]] = {}
_NAMES_BY_WIRE_ID: dict[int, str] = {}


def register_codec(codec: type[Codec]) -> type[Codec]:
    """Add a codec class to ``CODECS`` under its ``name`` and ``wire_id``.

    Raises:
        ValueError: if the name or the wire id is already taken, or the wire id is not positive.
    """
    if codec.name in CODECS:
        raise ValueError(f"a codec named {codec.name!r} is already registered")
    if codec.wire_id <= 0 or codec.wire_id in _NAMES_BY_WIRE_ID:
        raise ValueError(
            f"codec {codec.name!r} needs a positive wire id not in use, got {codec.wire_id}"
        )
    CODECS[codec.name] = codec
    _NAMES_BY_WIRE_ID[codec.wire_id] = codec.name
    return codec


for _codec in (NoneCodec, Fp16Codec, Bf16Codec, Int8Codec, TopKCodec):
    register_codec(_codec)


def get_codec(name: str, **options: Any) -> Codec:
    """Return a new codec of the given name, built with the given options.

    Raises:
        InvalidSpec: if no codec has this name, or it does not take these options.
    """
    try:
        factory = CODECS[name]
    except KeyError:
        raise InvalidSpec(
            f"unknown codec {name!r}; valid codecs: {', '.join(sorted(CODECS))}"
        ) from None
    try:
        check_options(factory, options)
    except TypeError as exc:
        raise InvalidSpec(f"codec {name!r} does not take options {options}: {exc}") from None
    return factory(**options)


def codec_by_wire_id(wire_id: int, **options: Any) -> Codec:
    """Return a new codec for a ``tessera.v1.Codec`` enum value read from a stream header.

    Raises:
        InvalidSpec: if the value is 0 (unspecified) or names no registered codec.
    """
    try:
        name = _NAMES_BY_WIRE_ID[wire_id]
    except KeyError:
        known = ", ".join(f"{i} ({n})" for i, n in sorted(_NAMES_BY_WIRE_ID.items()))
        raise InvalidSpec(f"unknown codec id {wire_id}; valid ids: {known}") from None
    return get_codec(name, **options)


def codec_for(codec: Codec, dtype: torch.dtype) -> Codec:
    """Return ``codec`` if it applies to ``dtype``, else the raw "none" codec."""
    if dtype.is_floating_point or isinstance(codec, NoneCodec):
        return codec
    return NoneCodec()


def encode_tensor(codec: Codec, tensor: torch.Tensor) -> tuple[Codec, memoryview]:
    """Encode ``tensor`` with ``codec``, or raw if the tensor is not floating.

    Returns:
        The codec actually used (write its ``wire_id`` in the header) and the payload.
    """
    used = codec_for(codec, tensor.dtype)
    return used, used.encode(tensor)
