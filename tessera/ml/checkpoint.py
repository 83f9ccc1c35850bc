"""Model checkpoints in the safetensors format: raw tensors and string metadata, no pickle.

A checkpoint loads into a fresh ``build_model`` instance with ``model.load_state_dict`` in plain
torch. Tensors that share memory (a tied output head and embedding) are written as separate
copies, because safetensors refuses aliased tensors; loading them back writes the same values
into the one shared parameter.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tessera.common.errors import InvalidSpec, NotFound, StoreCorrupt

__all__ = ["load_model", "save_model"]


def save_model(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``state_dict`` and ``metadata`` to ``path`` atomically.

    The file is written beside ``path`` and renamed over it, so a reader sees the old
    checkpoint or the new one, never a partial file.

    Raises:
        InvalidSpec: a metadata key or value is not a string, or a value is not a tensor.
    """
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidSpec(
                f"checkpoint metadata must map strings to strings; got {key!r}: {value!r}"
            )
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise InvalidSpec(
                f"checkpoint entry {name!r} is a {type(tensor).__name__}, not a tensor"
            )
        tensors[name] = tensor.detach().to("cpu").contiguous().clone()
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=meta)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint written by ``save_model``: (state dict, metadata).

    Raises:
        NotFound: there is no file at ``path``.
        StoreCorrupt: the file is not a valid safetensors file.
    """
    if not Path(path).is_file():
        raise NotFound(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(path, framework="pt") as reader:
            metadata: dict[str, str] = dict(reader.metadata() or {})
            tensors: dict[str, torch.Tensor] = {k: reader.get_tensor(k) for k in reader.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise StoreCorrupt(
            f"checkpoint {str(path)!r} is not a valid safetensors file ({exc})"
        ) from exc
    return tensors, metadata
