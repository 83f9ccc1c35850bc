"""Compute a task's contribution with torch (no gRPC): load weights, pick the shard, backprop."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from tessera.ml.datasets import load_dataset, task_batch_indices
from tessera.ml.training import compute_gradient
from tessera.ml.zoo import ModelSpec, build_model
from tessera.v1 import common_pb2

__all__ = ["Contribution", "Trainer"]


@dataclass(frozen=True)
class Contribution:
    """A task's gradient with its sample count, loss and compute time."""

    gradient: dict[str, torch.Tensor]
    samples: int
    loss: float
    seconds: float


class Trainer:
    """Keeps one model instance per job and computes gradients for its tasks."""

    def __init__(self, slowdown: float = 1.0) -> None:
        self._models: dict[str, nn.Module] = {}
        self._slowdown = slowdown

    def _model(self, job_id: str, spec: common_pb2.JobSpec) -> nn.Module:
        model = self._models.get(job_id)
        if model is None:
            data = load_dataset(spec.dataset)
            model = build_model(
                spec.model,
                ModelSpec(data.num_features, data.num_classes, tuple(spec.hidden_sizes), spec.seed),
            )
            self._models[job_id] = model
        return model

    def compute(
        self,
        job_id: str,
        spec: common_pb2.JobSpec,
        weights: Mapping[str, torch.Tensor],
        round_index: int,
        task_index: int,
        num_tasks: int,
    ) -> Contribution:
        """Gradient of the model at ``weights`` on this task's batch (``task_batch_indices``)."""
        started = time.perf_counter()
        data = load_dataset(spec.dataset)
        model = self._model(job_id, spec)
        model.load_state_dict(dict(weights), strict=True)
        batch = task_batch_indices(
            len(data.train_x),
            num_tasks,
            task_index,
            batch_size=spec.batch_size,
            seed=spec.seed,
            round_index=round_index,
        )
        gradient, loss = compute_gradient(model, data.train_x[batch], data.train_y[batch])
        elapsed = time.perf_counter() - started
        if self._slowdown > 1.0:
            # Emulates a slower machine: the extra time is what a slower CPU would have spent.
            time.sleep(elapsed * (self._slowdown - 1.0))
        return Contribution(gradient, len(batch), loss, time.perf_counter() - started)

    def forget(self, job_id: str) -> None:
        """Drop a job's model."""
        self._models.pop(job_id, None)
