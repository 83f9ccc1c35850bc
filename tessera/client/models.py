"""Model downloads: a GetModel stream to a safetensors file (no pickle anywhere)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from tessera.common.errors import InvalidSpec
from tessera.v1 import aggregator_pb2, common_pb2
from tessera.wire.stream import assemble, chunks_after_header, metas_from_specs

__all__ = ["MAX_MODEL_BYTES", "ModelFile", "write_model"]

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

    Load it back with ``safetensors.torch.load_file(path)`` and
    ``tessera.ml.zoo.build_model(...).load_state_dict(...)``.

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
