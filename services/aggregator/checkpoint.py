"""Checkpoints of a job's model, optimizer and round (safetensors + JSON, no pickle).

Layout under ``<directory>/<job-id>/``: ``v<version>.safetensors`` (model parameters and the
optimizer's tensors), ``v<version>.json`` (the job spec, optimizer hyper-parameters, the open
round and the last closed round's result) and ``LATEST``, naming the version. Each file is
written to a temporary name and renamed; ``LATEST`` moves last, so a crash at any point leaves
the previous checkpoint complete and current.

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
from safetensors.torch import load_file, save_file

from tessera.common.errors import StoreCorrupt
from tessera.common.ids import check_id

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

_MODEL = "model."
_OPTIMIZER = "optimizer."


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


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: Path, job_id: str, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` and make it the job's current one; older versions are removed."""
    folder = directory / check_id(job_id, "job_id")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {_MODEL + k: v.detach().contiguous() for k, v in checkpoint.model.items()}
    groups = checkpoint.optimizer["param_groups"]
    for index, state in checkpoint.optimizer["state"].items():
        for name, value in state.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{_OPTIMIZER}{index}.{name}"] = tensor.detach().contiguous()
    stem = f"v{checkpoint.version}"
    _atomic_write(folder / f"{stem}.safetensors", lambda p: save_file(tensors, str(p)))
    meta = {
        "version": checkpoint.version,
        "round": checkpoint.open_round,
        "spec": checkpoint.spec,
        "param_groups": groups,
        "results": checkpoint.results,
    }
    _atomic_write(folder / f"{stem}.json", lambda p: p.write_text(json.dumps(meta)))
    _atomic_write(folder / "LATEST", lambda p: p.write_text(stem))
    for old in folder.glob("v*"):
        if old.stem != stem and not old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)


def load_checkpoint(directory: Path, job_id: str) -> Checkpoint | None:
    """The job's current checkpoint, or None if it has none.

    Raises:
        StoreCorrupt: the checkpoint exists but cannot be read.
    """
    folder = directory / check_id(job_id, "job_id")
    latest = folder / "LATEST"
    if not latest.exists():
        return None
    try:
        stem = latest.read_text().strip()
        meta = json.loads((folder / f"{stem}.json").read_text())
        tensors = load_file(str(folder / f"{stem}.safetensors"))
    except (OSError, ValueError) as exc:
        raise StoreCorrupt(f"checkpoint of job {job_id!r} is unreadable: {exc}") from exc
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
