"""Checkpoints of a job's model, optimizer and round (safetensors, no pickle).

A checkpoint is one file, ``<directory>/<job-id>/checkpoint.safetensors``: the model's parameters
and the optimizer's tensors, with the job spec, the optimizer's hyper-parameters, the open round
and the last closed round's result as JSON in the file's metadata. It is written to a temporary
name, synced to disk and renamed over the previous one, so a crash at any point leaves the
previous checkpoint whole. (One file costs one sync and one rename per round; a file per part
and a pointer to the current version cost three of each.)

A checkpoint's size does not grow with the job: it holds the last result only (what a retried
CloseRound needs) and no ledger, since a round's contributions are never in a checkpoint (it is
taken as the round closes) and a restarted aggregator runs an unfinished round again.

A checkpoint is written before the round's close is answered, so the aggregator never holds
less than the scheduler has been told; when the aggregator closes a round early (its last
contribution in), the write overlaps the workers' reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from tessera.common.errors import StoreCorrupt
from tessera.common.ids import check_id
from tessera.ml.checkpoint import load_model

__all__ = ["Checkpoint", "CheckpointDir", "load_checkpoint", "save_checkpoint"]

_MODEL = "model."
_OPTIMIZER = "optimizer."
_FILE = "checkpoint.safetensors"
_META = "tessera.checkpoint"  # metadata key of the JSON part


@dataclass(frozen=True)
class Checkpoint:
    """What a job needs to carry on after a restart."""

    version: int
    spec: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    # The last closed round's result (empty before the first round closes).
    results: list[dict[str, Any]]
    # The open round; None means ``version`` (they differ only in async mode).
    round: int | None = None

    @property
    def open_round(self) -> int:
        """The round to carry on with."""
        return self.version if self.round is None else self.round


def _replace(path: Path, data: bytes, *, sync: bool) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        if sync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_checkpoint(
    directory: Path, job_id: str, checkpoint: Checkpoint, *, sync: bool = True
) -> None:
    """Write ``checkpoint`` over the job's current one.

    ``sync``: wait until the file is on disk before it replaces the old one. Without it a
    crash of the process still leaves a whole checkpoint, but a crash of the machine may not.
    """
    folder = directory / check_id(job_id, "job_id")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {_MODEL + k: v.detach().contiguous() for k, v in checkpoint.model.items()}
    for index, state in checkpoint.optimizer["state"].items():
        for name, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{_OPTIMIZER}{index}.{name}"] = tensor.detach().contiguous()
    meta = {
        "version": checkpoint.version,
        "round": checkpoint.open_round,
        "spec": checkpoint.spec,
        "param_groups": checkpoint.optimizer["param_groups"],
        "results": checkpoint.results,
    }
    _replace(folder / _FILE, save(tensors, metadata={_META: json.dumps(meta)}), sync=sync)


def load_checkpoint(directory: Path, job_id: str) -> Checkpoint | None:
    """The job's current checkpoint, or None if it has none.

    Raises:
        StoreCorrupt: the checkpoint exists but cannot be read.
    """
    path = directory / check_id(job_id, "job_id") / _FILE
    if not path.is_file():
        return None
    tensors, metadata = load_model(path)
    try:
        meta = json.loads(metadata[_META])
    except (KeyError, ValueError) as exc:
        raise StoreCorrupt(f"checkpoint of job {job_id!r} has no readable metadata") from exc
    model = {k.removeprefix(_MODEL): v for k, v in tensors.items() if k.startswith(_MODEL)}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIMIZER):
            index, name = key.removeprefix(_OPTIMIZER).split(".", 1)
            state.setdefault(int(index), {})[name] = value
    return Checkpoint(
        version=int(meta["version"]),
        spec=meta["spec"],
        model=model,
        optimizer={"state": state, "param_groups": meta["param_groups"]},
        results=meta["results"],
        round=int(meta.get("round", meta["version"])),
    )


@dataclass(frozen=True)
class CheckpointDir:
    """Where the aggregator keeps its jobs' checkpoints, and whether writes are synced."""

    path: Path
    sync: bool = True

    def save(self, job_id: str, checkpoint: Checkpoint) -> None:
        """See ``save_checkpoint``."""
        save_checkpoint(self.path, job_id, checkpoint, sync=self.sync)

    def load(self, job_id: str) -> Checkpoint | None:
        """See ``load_checkpoint``."""
        return load_checkpoint(self.path, job_id)
