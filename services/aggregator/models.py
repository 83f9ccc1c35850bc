"""A job's model, optimizer and open round (pure torch; no gRPC).

Modes (``JobSpec.mode``):

    sync, diloco: round ``r`` trains from model version ``r``; closing it combines the round's
        contributions (gradients in sync, pseudo-gradients in diloco) with the job's
        aggregation rule, steps the optimizer (in diloco the outer optimizer) and publishes
        version ``r + 1``.
    async: each contribution is applied when it arrives, as one optimizer step on the
        pseudo-gradient scaled by ``staleness_weight``, and publishes a new version. Its
        staleness is how many versions were published since the one it started from; beyond
        ``max_staleness`` it is rejected with the reason. Rounds still close, to evaluate
        and to count the tasks the scheduler handed out, but they no longer wait for each
        other's versions: a straggler's late work still counts if it is fresh enough.

How contributions are received, validated and folded into the round, and what that costs in
memory, is in ``services.aggregator.ingest``.

A job's settings are checked when it is opened, so that a job the aggregator could never
complete fails at ``SubmitJob`` rather than at its first round's close: the rule's options
must be valid and must fit ``tasks_per_round`` (Krum, Blanchard et al. 2017, needs
``n >= 2f + 3``; the trimmed mean, Yin et al. 2018, ``n > 2f``).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.aggregator.checkpoint import Checkpoint, CheckpointDir
from services.aggregator.ingest import BufferPool, Intake, RoundMean
from services.aggregator.ledger import Decision, Ledger
from services.aggregator.rules import AggregationRule, Krum, TrimmedMean, get_rule
from services.aggregator.rules.base import Update
from tessera.common.errors import Conflict, InvalidSpec, NotFound
from tessera.ml.recipes import Recipe
from tessera.ml.training import apply_gradient, make_optimizer
from tessera.wire.codecs import TensorMeta
from tessera.wire.frames import NonFinite, all_finite

__all__ = [
    "Contribution",
    "JobModel",
    "JobSettings",
    "Rejection",
    "RoundResult",
    "build_rule",
    "check_rule_fits",
    "settings_from_spec",
    "staleness_weight",
]

MODES = ("sync", "diloco", "async")


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
    test_macro_f1: float = 0.0
    test_perplexity: float = 0.0
    payload_bytes: int = 0


@dataclass(frozen=True)
class JobSettings:
    """The parts of a job spec the aggregator uses.

    Attributes:
        aggregation_options: the rule's options as (name, value) pairs, e.g.
            ``(("f", 2), ("m", 3))`` for Multi-Krum; empty means the rule's defaults.
        mode: "sync", "diloco" or "async" (see the module docstring).
        max_staleness: "async": the oldest base version accepted, in versions behind.
        recipe: the model and data; None means the one named by the fields above.
    """

    model: str
    dataset: str
    hidden_sizes: tuple[int, ...]
    optimizer: str
    learning_rate: float
    aggregation: str
    tasks_per_round: int
    seed: int
    aggregation_options: tuple[tuple[str, int | float], ...] = ()
    mode: str = "sync"
    max_staleness: int = 0
    recipe: Recipe | None = None

    def model_recipe(self) -> Recipe:
        """The recipe the job's model is built from."""
        if self.recipe is not None:
            return self.recipe
        return Recipe(
            model=self.model, dataset=self.dataset, hidden_sizes=self.hidden_sizes, seed=self.seed
        )


def staleness_weight(staleness: int) -> float:
    """How much an async contribution ``staleness`` versions old counts: ``(1 + s) ** -0.5``.

    The polynomial decay of FedAsync (Xie et al. 2019, "Asynchronous Federated
    Optimization"): fresh work counts fully and old work fades without ever being ignored.
    """
    return float((1 + staleness) ** -0.5)


# Closed rounds whose results are kept for a repeated CloseRound (only the last is ever asked
# again; one more for safety).
_RESULTS_KEPT = 2


class JobModel:
    """Model, optimizer and the open round of one job. Thread-safe.

    Args:
        job_id: the job's id.
        settings: validated settings (``settings_from_spec``).
        ledger: where every decision about a contribution is recorded.
        pool_capacity: idle receive buffers kept for reuse (``ingest.BufferPool``).
        max_payload_bytes: the largest contribution the aggregator accepts; a model whose
            gradient could never fit is refused here, when the job is opened.
        checkpoints: where a checkpoint is written as each round closes (None: nowhere).
        on_round_closed: called once per round, as it closes (not for a repeated close).

    Raises:
        InvalidSpec: a setting the job cannot run with (rule, model, dataset, optimizer, or a
            model larger than ``max_payload_bytes``).
    """

    def __init__(
        self,
        job_id: str,
        settings: JobSettings,
        ledger: Ledger,
        *,
        pool_capacity: int = 2,
        max_payload_bytes: int | None = None,
        checkpoints: CheckpointDir | None = None,
        spec: dict[str, Any] | None = None,
        on_round_closed: Callable[[RoundResult], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self._on_round_closed = on_round_closed
        self._checkpoints = checkpoints
        self._spec = spec or {}
        self.settings = settings
        self._ledger = ledger
        self._lock = threading.Lock()
        self._rule = build_rule(settings)
        check_rule_fits(settings.aggregation, self._rule, settings.tasks_per_round)
        if settings.mode == "async" and not self._rule.streaming:
            raise InvalidSpec(
                f"aggregation {settings.aggregation!r} compares a round's contributions, but "
                "mode 'async' applies each one alone; use aggregation 'mean'"
            )
        self._model, self._objective = settings.model_recipe().build()
        self._optimizer = make_optimizer(settings.optimizer, self._model, settings.learning_rate)
        self._parameter_metas = {
            n: (p.dtype, tuple(p.shape)) for n, p in self._model.named_parameters()
        }
        raw_bytes = sum(p.numel() * p.element_size() for p in self._model.parameters())
        if max_payload_bytes is not None and raw_bytes > max_payload_bytes:
            raise InvalidSpec(
                f"model {settings.model!r} with hidden sizes {list(settings.hidden_sizes)} has "
                f"{raw_bytes} bytes of parameters; this aggregator accepts contributions of at "
                f"most {max_payload_bytes} bytes (--max-payload-bytes)"
            )
        self.pool = BufferPool(pool_capacity)
        self.version = 0
        # The open round; equal to ``version`` except in async mode.
        self.round = 0
        self._snapshot = self._take_snapshot()
        # (version, weights) of the version before an early close (see ``close_round``).
        self._superseded: tuple[int, Mapping[str, torch.Tensor]] | None = None
        self._reset_round()
        self._results: dict[int, RoundResult] = {}
        self._round_started = time.monotonic()

    def _take_snapshot(self) -> dict[str, torch.Tensor]:
        # An immutable copy: model downloads read it while the next round trains.
        return {k: v.detach().clone() for k, v in self._model.state_dict().items()}

    def _reset_round(self) -> None:
        self._mean = RoundMean(self.pool)
        self._buffered: list[Update] = []
        self._losses: list[tuple[float, int]] = []
        self._payload_bytes = 0

    @property
    def parameter_metas(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Name -> (dtype, shape) of every trainable parameter; what a gradient must match."""
        return dict(self._parameter_metas)

    def snapshot(self, version: int) -> tuple[int, Mapping[str, torch.Tensor]]:
        """The published weights of ``version`` (0 = latest).

        Raises:
            NotFound: that version is not held (the latest is, and the one before it while
                the scheduler has not yet closed a round the aggregator closed early).
        """
        with self._lock:
            if self._superseded is not None and version == self._superseded[0]:
                return self._superseded
            if version not in (0, self.version):
                raise NotFound(
                    f"job {self.job_id!r} model version {version} is not available; "
                    f"the latest is {self.version}"
                )
            return self.version, self._snapshot

    def check_header(self, c: Contribution, metas: Sequence[TensorMeta]) -> Rejection | None:
        """Return why a contribution must be rejected before its payload is read, or None."""
        stale = self._staleness_problem(c)
        if stale is not None:
            return stale
        if not 0 <= c.task < self.settings.tasks_per_round:
            return Rejection(
                "task", f"task {c.task} is not in [0, {self.settings.tasks_per_round})"
            )
        if c.samples < 1:
            return Rejection("samples", f"samples ({c.samples}) must be >= 1")
        expected = self._parameter_metas
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

    def _staleness_problem(self, c: Contribution) -> Rejection | None:
        """Why ``c`` is too old (or from the future) for the job's mode, or None."""
        if self.settings.mode != "async":
            if c.round != self.version or c.base_version != self.version:
                return Rejection(
                    "stale",
                    f"stale contribution: round {c.round} from base version {c.base_version}; "
                    f"the open round is {self.version}",
                )
            return None
        if c.round > self.round or c.base_version > self.version:
            return Rejection(
                "stale",
                f"contribution from round {c.round}, base version {c.base_version}, is ahead "
                f"of the open round {self.round} and latest version {self.version}",
            )
        staleness = self.version - c.base_version
        if staleness > self.settings.max_staleness:
            return Rejection(
                "stale",
                f"stale contribution: base version {c.base_version} is {staleness} versions "
                f"behind the latest ({self.version}); this job accepts at most "
                f"{self.settings.max_staleness} (max_staleness)",
            )
        return None

    def complete(self, round_index: int) -> bool:
        """Whether every task of the open round ``round_index`` is in, so it may close now.

        Never in async mode, whose rounds close only when the scheduler says so.
        """
        with self._lock:
            return (
                self.settings.mode != "async"
                and round_index == self.round
                and round_index not in self._results
                and self._ledger.applied_count(self.job_id, round_index)
                >= self.settings.tasks_per_round
            )

    def is_duplicate(self, c: Contribution) -> bool:
        """Whether (job, round, task) is already applied; records the duplicate if so."""
        return self._ledger.note_duplicate(c.job_id, c.round, c.task, c.node_id)

    def intake(self, c: Contribution, metas: Sequence[TensorMeta], *, max_bytes: int) -> Intake:
        """A receiver for a contribution's payload, with a buffer from the job's pool.

        Pass it to ``receive``, then to ``finish`` in a ``finally``.

        Raises:
            QuotaExceeded: the table declares more than ``max_bytes``.
        """
        with self._lock:
            if self._rule.streaming and self.settings.mode != "async":
                return self._mean.intake(metas, float(c.samples), max_bytes=max_bytes)
        return Intake(metas, max_bytes=max_bytes, pool=self.pool)

    def finish(self, intake: Intake) -> None:
        """End an intake whatever happened: return its buffer unless the round keeps it."""
        with self._lock:
            self._mean.finish(intake)

    def receive(
        self, c: Contribution, intake: Intake, chunks: Iterable[bytes | memoryview]
    ) -> tuple[Decision, Rejection | None]:
        """Receive a contribution's payload, then validate and apply it exactly once.

        Reading stops at the first chunk with a non-finite value, or once the round has
        closed. Call ``finish(intake)`` afterwards in any case.

        Raises:
            InvalidSpec: the chunks do not match the table (too many bytes, too few, or a
                payload that does not decode).
        """
        try:
            for chunk in chunks:
                intake.write(chunk)
                if self.settings.mode != "async" and self.version != c.round:
                    return self._closed_meanwhile(c)
            tensors = intake.tensors()
        except NonFinite as exc:
            return Decision.REJECTED, self.reject(c, Rejection("non_finite", str(exc)))
        return self._apply(c, tensors, intake)

    def add(
        self, c: Contribution, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[Decision, Rejection | None]:
        """Validate and apply a contribution exactly once; the decision is also in the ledger.

        The tensors stay the caller's: they are read, never modified or kept (except by a
        robust rule, until the round closes).
        """
        for name, tensor in tensors.items():
            if tensor.dtype.is_floating_point and not all_finite(tensor):
                rejection = Rejection("non_finite", f"tensor {name!r} has non-finite values")
                return Decision.REJECTED, self.reject(c, rejection)
        return self._apply(c, tensors, None)

    def _apply(
        self, c: Contribution, tensors: Mapping[str, torch.Tensor], intake: Intake | None
    ) -> tuple[Decision, Rejection | None]:
        with self._lock:
            if self.settings.mode == "async":
                return self._apply_async(c, tensors, intake)
            if c.round != self.version:
                return self._closed_meanwhile(c)
            if not self._ledger.claim(c.job_id, c.round, c.task, c.node_id):
                return Decision.DUPLICATE, None
            self._payload_bytes += _payload_size(tensors, intake)
            if self._rule.streaming and intake is not None:
                self._mean.commit(intake, tensors, float(c.samples))
            elif self._rule.streaming:
                self._mean.add(tensors, float(c.samples))
            else:
                self._buffered.append(Update(tensors, float(c.samples)))
                if intake is not None and intake.shares_buffer:
                    intake.keep()
            self._losses.append((c.loss, c.samples))
        return Decision.APPLIED, None

    def _closed_meanwhile(self, c: Contribution) -> tuple[Decision, Rejection | None]:
        """The decision about ``c`` when its round closed while it arrived.

        A duplicate if its task was counted (a round may close with another push of the same
        task, as soon as every task is in), else stale.
        """
        if self._ledger.note_duplicate(c.job_id, c.round, c.task, c.node_id):
            return Decision.DUPLICATE, None
        rejection = Rejection("stale", f"round {c.round} closed while the contribution arrived")
        return Decision.REJECTED, self.reject(c, rejection)

    def _apply_async(
        self, c: Contribution, tensors: Mapping[str, torch.Tensor], intake: Intake | None
    ) -> tuple[Decision, Rejection | None]:
        """One optimizer step on a staleness-weighted contribution (caller holds the lock)."""
        stale = self._staleness_problem(c)
        if stale is not None:
            # Versions were published while this one arrived.
            return Decision.REJECTED, self.reject(c, stale)
        if not self._ledger.claim(c.job_id, c.round, c.task, c.node_id):
            return Decision.DUPLICATE, None
        weight = staleness_weight(self.version - c.base_version)
        apply_gradient(
            self._model, self._optimizer, {name: t * weight for name, t in tensors.items()}
        )
        self.version += 1
        self._snapshot = self._take_snapshot()
        self._payload_bytes += _payload_size(tensors, intake)
        self._losses.append((c.loss, c.samples))
        return Decision.APPLIED, None

    def reject(self, c: Contribution, rejection: Rejection) -> Rejection:
        """Record a rejection in the ledger and return it."""
        self._ledger.reject(c.job_id, c.round, c.task, c.node_id, rejection.reason, rejection.kind)
        return rejection

    def close_round(self, round_index: int, num_tasks: int, *, early: bool = False) -> RoundResult:
        """Combine the round's contributions, step, publish the next version, evaluate.

        Closing a round that is already closed returns its result again (retries are safe).
        ``early``: the aggregator closes the round itself, its last contribution in, before
        the scheduler says so. The version the round trained on stays available until the
        scheduler's own close: a task it moved meanwhile (its node died after pushing) still
        fetches that version, and its push is then answered DUPLICATE.

        Raises:
            Conflict: the round is not open, or not every task has contributed.
        """
        with self._lock:
            if not early:
                self._superseded = None
            if round_index in self._results:
                return self._results[round_index]
            if round_index != self.round:
                raise Conflict(
                    f"job {self.job_id!r}: round {round_index} is not open (open: {self.round})"
                )
            have = self._ledger.applied_count(self.job_id, round_index)
            if have < num_tasks:
                raise Conflict(
                    f"job {self.job_id!r} round {round_index} has {have} of {num_tasks} "
                    "contributions"
                )
            if self.settings.mode != "async":
                if early:
                    self._superseded = (self.version, self._snapshot)
                self._step()
            evaluation = self._objective.evaluate(self._model)
            total = sum(s for _, s in self._losses)
            train_loss = sum(loss * s for loss, s in self._losses) / total if total else math.nan
            self.round += 1
            now = time.monotonic()
            result = RoundResult(
                round=round_index,
                model_version=self.version,
                train_loss=train_loss,
                test_loss=evaluation.loss,
                test_accuracy=evaluation.accuracy or 0.0,
                contributions=len(self._losses),
                seconds=now - self._round_started,
                test_macro_f1=evaluation.macro_f1 or 0.0,
                test_perplexity=evaluation.perplexity or 0.0,
                payload_bytes=self._payload_bytes,
            )
            self._round_started = now
            self._results[round_index] = result
            while len(self._results) > _RESULTS_KEPT:
                del self._results[next(iter(self._results))]
            self._reset_round()
            # This round's keys stay: a moved task may still push into it (see ``early``).
            self._ledger.forget_before(self.job_id, round_index)
            if self._checkpoints is not None:
                self._checkpoints.save(self.job_id, self._checkpoint(result))
            if self._on_round_closed is not None:
                self._on_round_closed(result)
            return result

    def _step(self) -> None:
        """Combine the round's contributions and step; publish the next version."""
        gradient = (
            self._mean.result() if self._rule.streaming else self._rule.aggregate(self._buffered)
        )
        apply_gradient(self._model, self._optimizer, gradient)
        # The optimizer keeps no reference to the gradient: its memory can be reused.
        del gradient
        self._mean.recycle()
        self.version += 1
        self._snapshot = self._take_snapshot()

    def _checkpoint(self, result: RoundResult) -> Checkpoint:
        """The state to carry on from after ``result``'s round (caller holds the lock)."""
        return Checkpoint(
            version=self.version,
            round=self.round,
            spec=self._spec,
            model=self._snapshot,
            optimizer=self._optimizer.state_dict(),
            results=[dataclasses.asdict(result)],
        )

    def restore(self, checkpoint: Checkpoint) -> None:
        """Carry on from a checkpoint: its model, optimizer state, version and last result."""
        with self._lock:
            self._model.load_state_dict(checkpoint.model)
            self._optimizer.load_state_dict(checkpoint.optimizer)
            self.version = checkpoint.version
            self.round = checkpoint.open_round
            self._snapshot = self._take_snapshot()
            self._superseded = None
            self._results = {int(r["round"]): RoundResult(**r) for r in checkpoint.results}
            self._reset_round()

    def close(self) -> None:
        """Free the job's idle receive buffers."""
        self.pool.clear()


def build_rule(settings: JobSettings) -> AggregationRule:
    """Build the job's aggregation rule with its options.

    Raises:
        InvalidSpec: unknown rule, an option it does not take, or an invalid option value.
    """
    return get_rule(settings.aggregation, **dict(settings.aggregation_options))


def check_rule_fits(name: str, rule: AggregationRule, tasks_per_round: int) -> None:
    """Check that a round of ``tasks_per_round`` contributions satisfies the rule's needs.

    Raises:
        InvalidSpec: e.g. "aggregation 'krum' with f=2 needs tasks_per_round >= 2f + 3 = 7,
            got 5".
    """
    n = tasks_per_round
    if isinstance(rule, Krum):
        needed = 2 * rule.f + 3
        if n < needed:
            raise InvalidSpec(
                f"aggregation {name!r} with f={rule.f} needs tasks_per_round >= 2f + 3 = "
                f"{needed}, got {n}"
            )
        if rule.m > n - rule.f:
            raise InvalidSpec(
                f"aggregation {name!r} averages m={rule.m} contributions, at most "
                f"tasks_per_round - f = {n - rule.f}"
            )
    elif isinstance(rule, TrimmedMean):
        needed = 2 * rule.f + 1
        if n < needed:
            raise InvalidSpec(
                f"aggregation {name!r} with f={rule.f} trims f from each side, so it needs "
                f"tasks_per_round >= 2f + 1 = {needed}, got {n}"
            )


def _payload_size(tensors: Mapping[str, torch.Tensor], intake: Intake | None) -> int:
    """Bytes of a contribution as received (its encoded size), or its decoded size in-process."""
    if intake is not None:
        return intake.assembler.received_bytes
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _option_value(name: str, value: float) -> int | float:
    # Options arrive as doubles (a proto map<string, double>); integral ones become ints so
    # that integer options (f, m, iterations) validate.
    if not math.isfinite(value):
        raise InvalidSpec(f"aggregation option {name} ({value}) must be finite")
    return int(value) if float(value).is_integer() else float(value)


def settings_from_spec(
    model: str,
    dataset: str,
    hidden_sizes: Sequence[int],
    optimizer: str,
    learning_rate: float,
    aggregation: str,
    tasks_per_round: int,
    seed: int,
    aggregation_options: Mapping[str, float] | None = None,
    *,
    mode: str = "sync",
    max_staleness: int = 0,
    recipe: Recipe | None = None,
) -> JobSettings:
    """Build and check ``JobSettings``, including the rule and its fit to the round size.

    Args:
        model: a zoo model name.
        dataset: a data set name.
        hidden_sizes: the model's hidden widths (empty: the model's default).
        optimizer: an optimizer name (``tessera.ml.training.OPTIMIZERS``).
        learning_rate: the optimizer's learning rate, > 0.
        aggregation: an aggregation rule name ("" means "mean").
        tasks_per_round: contributions per round, >= 1.
        seed: the seed of the model's initial weights.
        aggregation_options: the rule's options (a job spec's proposed
            ``map<string, double> aggregation_options``); None or empty: the defaults.
        mode: "sync" (or ""), "diloco" or "async".
        max_staleness: "async": versions a contribution may lag (0 = tasks_per_round).
        recipe: the full model and data description (None: from model, dataset,
            hidden_sizes and seed).

    Raises:
        InvalidSpec: a value the aggregator cannot work with, naming it.
    """
    if tasks_per_round < 1:
        raise InvalidSpec(f"tasks_per_round ({tasks_per_round}) must be >= 1")
    mode = mode or "sync"
    if mode not in MODES:
        raise InvalidSpec(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise InvalidSpec(f"learning_rate ({learning_rate}) must be > 0")
    options = tuple(
        sorted(
            (key, _option_value(key, value)) for key, value in (aggregation_options or {}).items()
        )
    )
    settings = JobSettings(
        model=model,
        dataset=dataset,
        hidden_sizes=tuple(hidden_sizes),
        optimizer=optimizer,
        learning_rate=learning_rate,
        aggregation=aggregation or "mean",
        tasks_per_round=tasks_per_round,
        seed=seed,
        aggregation_options=options,
        mode=mode,
        max_staleness=max_staleness or tasks_per_round,
        recipe=recipe,
    )
    check_rule_fits(settings.aggregation, build_rule(settings), tasks_per_round)
    return settings
