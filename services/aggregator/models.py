"""A job's model, optimizer and open round (pure torch; no gRPC).

Synchronous rounds: round ``r`` trains from model version ``r``; closing it combines the
round's contributions with the job's aggregation rule, steps the optimizer and publishes
version ``r + 1``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from services.aggregator.ledger import Decision, Ledger
from services.aggregator.rules import get_rule
from services.aggregator.rules.base import Update
from services.aggregator.rules.mean import RunningMean
from tessera.common.errors import Conflict, InvalidSpec, NotFound
from tessera.ml.datasets import load_dataset
from tessera.ml.training import apply_gradient, evaluate, make_optimizer
from tessera.ml.zoo import ModelSpec, build_model
from tessera.wire.codecs import TensorMeta

__all__ = [
    "Contribution",
    "JobModel",
    "JobSettings",
    "Rejection",
    "RoundResult",
    "settings_from_spec",
]


@dataclass(frozen=True)
class Contribution:
    """Who sent a contribution and for what."""

    job_id: str
    round: int
    task: int
    node_id: str
    base_version: int
    samples: int
    loss: float


@dataclass(frozen=True)
class Rejection:
    """Why a contribution was refused: a short ``kind`` for metrics and a message for people."""

    kind: str
    reason: str


@dataclass(frozen=True)
class RoundResult:
    """The outcome of closing a round."""

    round: int
    model_version: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    contributions: int
    seconds: float


@dataclass(frozen=True)
class JobSettings:
    """The parts of a job spec the aggregator uses."""

    model: str
    dataset: str
    hidden_sizes: tuple[int, ...]
    optimizer: str
    learning_rate: float
    aggregation: str
    tasks_per_round: int
    seed: int


class JobModel:
    """Model, optimizer and the open round of one job. Thread-safe."""

    def __init__(self, job_id: str, settings: JobSettings, ledger: Ledger) -> None:
        self.job_id = job_id
        self.settings = settings
        self._ledger = ledger
        self._lock = threading.Lock()
        data = load_dataset(settings.dataset)
        self._test = (data.test_x, data.test_y)
        self._model = build_model(
            settings.model,
            ModelSpec(data.num_features, data.num_classes, settings.hidden_sizes, settings.seed),
        )
        self._optimizer = make_optimizer(settings.optimizer, self._model, settings.learning_rate)
        self._rule = get_rule(settings.aggregation)
        self.version = 0
        self._snapshot = self._take_snapshot()
        self._reset_round()
        self._results: dict[int, RoundResult] = {}
        self._round_started = time.monotonic()

    def _take_snapshot(self) -> dict[str, torch.Tensor]:
        # An immutable copy: model downloads read it while the next round trains.
        return {k: v.detach().clone() for k, v in self._model.state_dict().items()}

    def _reset_round(self) -> None:
        self._running = RunningMean()
        self._buffered: list[Update] = []
        self._losses: list[tuple[float, int]] = []

    @property
    def parameter_metas(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Name -> (dtype, shape) of every trainable parameter; what a gradient must match."""
        return {n: (p.dtype, tuple(p.shape)) for n, p in self._model.named_parameters()}

    def snapshot(self, version: int) -> tuple[int, Mapping[str, torch.Tensor]]:
        """The published weights of ``version`` (0 = latest).

        Raises:
            NotFound: that version is not held (only the latest is).
        """
        with self._lock:
            if version not in (0, self.version):
                raise NotFound(
                    f"job {self.job_id!r} model version {version} is not available; "
                    f"the latest is {self.version}"
                )
            return self.version, self._snapshot

    def check_header(self, c: Contribution, metas: Sequence[TensorMeta]) -> Rejection | None:
        """Return why a contribution must be rejected before its payload is read, or None."""
        if c.round != self.version or c.base_version != self.version:
            return Rejection(
                "stale",
                f"stale contribution: round {c.round} from base version {c.base_version}; "
                f"the open round is {self.version}",
            )
        if not 0 <= c.task < self.settings.tasks_per_round:
            return Rejection(
                "task", f"task {c.task} is not in [0, {self.settings.tasks_per_round})"
            )
        if c.samples < 1:
            return Rejection("samples", f"samples ({c.samples}) must be >= 1")
        expected = self.parameter_metas
        got = {m.name: (m.dtype, m.shape) for m in metas}
        if got.keys() != expected.keys():
            missing = sorted(expected.keys() - got.keys())
            extra = sorted(got.keys() - expected.keys())
            return Rejection(
                "tensors",
                f"tensor names do not match the model (missing {missing}, unexpected {extra})",
            )
        for name, (dtype, shape) in expected.items():
            if got[name] != (dtype, shape):
                return Rejection(
                    "tensors",
                    f"tensor {name!r} is {got[name][0]} {got[name][1]}; the model needs "
                    f"{dtype} {shape}",
                )
        return None

    def is_duplicate(self, c: Contribution) -> bool:
        """Whether (job, round, task) is already applied; records the duplicate if so."""
        return self._ledger.note_duplicate(c.job_id, c.round, c.task, c.node_id)

    def add(
        self, c: Contribution, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[Decision, Rejection | None]:
        """Validate and apply a contribution exactly once; the decision is also in the ledger."""
        for name, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                rejection = Rejection("non_finite", f"tensor {name!r} has non-finite values")
                return Decision.REJECTED, self.reject(c, rejection)
        with self._lock:
            if c.round != self.version:
                rejection = Rejection(
                    "stale", f"round {c.round} closed while the contribution arrived"
                )
                return Decision.REJECTED, self.reject(c, rejection)
            if not self._ledger.claim(c.job_id, c.round, c.task, c.node_id):
                return Decision.DUPLICATE, None
            update = Update(tensors, float(c.samples))
            if self._rule.streaming:
                self._running.add(update)
            else:
                self._buffered.append(update)
            self._losses.append((c.loss, c.samples))
        return Decision.APPLIED, None

    def reject(self, c: Contribution, rejection: Rejection) -> Rejection:
        """Record a rejection in the ledger and return it."""
        self._ledger.reject(c.job_id, c.round, c.task, c.node_id, rejection.reason, rejection.kind)
        return rejection

    def close_round(self, round_index: int, num_tasks: int) -> RoundResult:
        """Combine the round's contributions, step, publish the next version, evaluate.

        Closing a round that is already closed returns its result again (retries are safe).

        Raises:
            Conflict: the round is not open, or not every task has contributed.
        """
        with self._lock:
            if round_index in self._results:
                return self._results[round_index]
            if round_index != self.version:
                raise Conflict(
                    f"job {self.job_id!r}: round {round_index} is not open (open: {self.version})"
                )
            have = self._ledger.applied_count(self.job_id, round_index)
            if have < num_tasks:
                raise Conflict(
                    f"job {self.job_id!r} round {round_index} has {have} of {num_tasks} "
                    "contributions"
                )
            gradient = (
                self._running.result()
                if self._rule.streaming
                else self._rule.aggregate(self._buffered)
            )
            apply_gradient(self._model, self._optimizer, gradient)
            evaluation = evaluate(self._model, *self._test)
            total = sum(s for _, s in self._losses)
            train_loss = sum(loss * s for loss, s in self._losses) / total if total else math.nan
            self.version += 1
            self._snapshot = self._take_snapshot()
            now = time.monotonic()
            result = RoundResult(
                round=round_index,
                model_version=self.version,
                train_loss=train_loss,
                test_loss=evaluation.loss,
                test_accuracy=evaluation.accuracy,
                contributions=len(self._losses),
                seconds=now - self._round_started,
            )
            self._round_started = now
            self._results[round_index] = result
            self._reset_round()
            return result


def settings_from_spec(
    model: str,
    dataset: str,
    hidden_sizes: Sequence[int],
    optimizer: str,
    learning_rate: float,
    aggregation: str,
    tasks_per_round: int,
    seed: int,
) -> JobSettings:
    """Build and sanity-check ``JobSettings``.

    Raises:
        InvalidSpec: a value the aggregator cannot work with.
    """
    if tasks_per_round < 1:
        raise InvalidSpec(f"tasks_per_round ({tasks_per_round}) must be >= 1")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise InvalidSpec(f"learning_rate ({learning_rate}) must be > 0")
    return JobSettings(
        model=model,
        dataset=dataset,
        hidden_sizes=tuple(hidden_sizes),
        optimizer=optimizer,
        learning_rate=learning_rate,
        aggregation=aggregation or "mean",
        tasks_per_round=tasks_per_round,
        seed=seed,
    )
