"""Model downloads: a GetModel stream to a safetensors file (no pickle anywhere)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from torch import nn

from tessera.common.errors import InvalidSpec
from tessera.v1 import aggregator_pb2, common_pb2
from tessera.wire.stream import assemble, chunks_after_header, metas_from_specs

__all__ = ["MAX_MODEL_BYTES", "ModelFile", "load_model", "write_model"]

MAX_MODEL_BYTES = 64 * 1024**3


@dataclass(frozen=True)
class ModelFile:
    """A downloaded model."""

    path: Path
    job_id: str
    version: int
    tensors: int
    bytes: int


def write_model(
    path: Path, job: common_pb2.Job, frames: Iterator[aggregator_pb2.ModelFrame]
) -> ModelFile:
    """Receive a model stream and write it as safetensors with the job spec as metadata.

    Load it back into the zoo's model with ``load_model(path)``, or by hand with
    ``safetensors.torch.load_file(path)`` and ``model.load_state_dict(...)``.

    Raises:
        InvalidSpec: the stream is malformed.
    """
    from safetensors.torch import save_file

    first = next(frames, None)
    if first is None or first.WhichOneof("frame") != "header":
        raise InvalidSpec("model stream carried no header")
    header = first.header
    metas = metas_from_specs(header.tensors)
    assembler = assemble(metas, chunks_after_header(frames), max_bytes=MAX_MODEL_BYTES)
    tensors = {name: t.contiguous() for name, t in assembler.tensors().items()}
    metadata = {
        "job_id": job.job_id,
        "model_version": str(header.version),
        "spec": json.dumps(json_format.MessageToDict(job.spec)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return ModelFile(path, job.job_id, header.version, len(tensors), assembler.received_bytes)


def load_model(path: str | Path) -> tuple[nn.Module, common_pb2.JobSpec]:
    """Rebuild a downloaded model: the zoo's model for the job spec in the file, its weights.

    Plain torch and safetensors: the spec names the model and its sizes, the zoo builds it,
    ``load_state_dict`` fills it (strictly: every tensor must match). No code is loaded.

    Raises:
        InvalidSpec: the file is not a Tessera model download, or its tensors do not fit.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tessera.ml.recipes import Recipe

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (OSError, ValueError) as exc:
        raise InvalidSpec(f"{str(path)!r} is not a readable safetensors file ({exc})") from exc
    if "spec" not in metadata:
        raise InvalidSpec(f"{str(path)!r} has no job spec in its metadata; not a Tessera model")
    spec = json_format.Parse(metadata["spec"], common_pb2.JobSpec())
    model, _ = Recipe.from_spec(spec).build()
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise InvalidSpec(
            f"the tensors in {str(path)!r} do not fit the job's model: {exc}"
        ) from exc
    model.eval()
    return model, spec
