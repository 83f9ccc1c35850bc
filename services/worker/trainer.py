"""Compute a task's contribution with torch (no gRPC): load weights, pick batches, train.

What a task sends depends on the job's mode:

    sync: the gradient of the model at the task's version on one batch.
    diloco, async: the pseudo-gradient after ``inner_steps`` local steps with the inner
        optimizer (AdamW by default), i.e. start weights minus end weights, so the aggregator
        treats it like a gradient (Douillard et al. 2023, "DiLoCo").

The inner optimizer starts fresh for every task. A task is then a pure function of (spec,
weights, round, task): a reassigned task computes the same contribution on any node, and a
volunteer who leaves takes no state with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tessera.ml.recipes import Recipe, TaskData
from tessera.ml.training import compute_objective_gradient, make_optimizer
from tessera.v1 import common_pb2

__all__ = ["Contribution", "Trainer"]


@dataclass(frozen=True)
class Contribution:
    """A task's (pseudo-)gradient with its sample count, mean loss and compute time."""

    gradient: dict[str, torch.Tensor]
    samples: int
    loss: float
    seconds: float


@dataclass
class _JobState:
    model: nn.Module
    data: TaskData


class Trainer:
    """Keeps one model instance per job and computes its tasks' contributions.

    Args:
        slowdown: > 1 emulates a slower machine by idling for the extra time.
        local_dir: the folder of this worker's own data sets (``<name>.npz``).
    """

    def __init__(self, slowdown: float = 1.0, local_dir: Path | None = None) -> None:
        self._jobs: dict[str, _JobState] = {}
        self._slowdown = slowdown
        self._local_dir = local_dir

    def _state(self, job_id: str, spec: common_pb2.JobSpec) -> _JobState:
        state = self._jobs.get(job_id)
        if state is None:
            recipe = Recipe.from_spec(spec)
            model, _ = recipe.build()
            state = _JobState(model, TaskData(recipe, self._local_dir))
            self._jobs[job_id] = state
        return state

    def compute(
        self,
        job_id: str,
        spec: common_pb2.JobSpec,
        weights: Mapping[str, torch.Tensor],
        round_index: int,
        task_index: int,
        num_tasks: int,
    ) -> Contribution:
        """The contribution of task ``task_index`` of round ``round_index`` from ``weights``.

        Raises:
            InvalidSpec: the spec does not build here (e.g. no local data), or the weights do
                not fit the model.
        """
        started = time.perf_counter()
        state = self._state(job_id, spec)
        state.model.load_state_dict(dict(weights), strict=True)
        if (spec.mode or "sync") == "sync":
            gradient, loss, samples = self._gradient(
                state, spec, round_index, task_index, num_tasks
            )
        else:
            gradient, loss, samples = self._local_steps(
                state, spec, round_index, task_index, num_tasks
            )
        elapsed = time.perf_counter() - started
        if self._slowdown > 1.0:
            # Emulates a slower machine: the extra time is what a slower CPU would have spent.
            time.sleep(elapsed * (self._slowdown - 1.0))
        return Contribution(gradient, samples, loss, time.perf_counter() - started)

    @staticmethod
    def _gradient(
        state: _JobState, spec: common_pb2.JobSpec, round_index: int, task: int, num_tasks: int
    ) -> tuple[dict[str, torch.Tensor], float, int]:
        batch = state.data.indices(
            num_tasks, task, batch_size=spec.batch_size, round_index=round_index
        )
        inputs, targets = state.data.objective.batch(batch)
        gradient, loss = compute_objective_gradient(
            state.model, state.data.objective, inputs, targets
        )
        return gradient, loss, len(batch)

    @staticmethod
    def _local_steps(
        state: _JobState, spec: common_pb2.JobSpec, round_index: int, task: int, num_tasks: int
    ) -> tuple[dict[str, torch.Tensor], float, int]:
        model, objective = state.model, state.data.objective
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        optimizer = make_optimizer(
            spec.inner_optimizer or "adamw", model, spec.inner_learning_rate or 1e-3
        )
        steps = max(1, spec.inner_steps)
        model.train()
        total_loss, samples = 0.0, 0
        for step in range(steps):
            # Step s of round r draws batch r * H + s: no two steps of a task share a draw.
            batch = state.data.indices(
                num_tasks, task, batch_size=spec.batch_size, round_index=round_index * steps + step
            )
            inputs, targets = objective.batch(batch)
            loss = objective.loss(model, inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total_loss += float(loss.item())
            samples += len(batch)
        pseudo_gradient = {name: start[name] - p.detach() for name, p in model.named_parameters()}
        return pseudo_gradient, total_loss / steps, samples

    def forget(self, job_id: str) -> None:
        """Drop a job's model."""
        self._jobs.pop(job_id, None)
