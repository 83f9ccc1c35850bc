"""The scheduling-policy interface and the value types every policy shares.

A policy solves one batch: given the expected-time-to-compute (ETC) matrix of T tasks on M
machines and a feasibility mask produced by the filters, it maps every task to a feasible
machine so that the makespan (the largest summed ETC on any machine, all machines free at time
0) is small. Outcomes carry a :class:`Status`, as in the Kubernetes scheduling framework:
``UNSCHEDULABLE`` is a property of the input and is reported to the user, ``ERROR`` is an
internal fault and may be retried.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from tessera.common.errors import InvalidSpec

__all__ = [
    "Assignment",
    "Budget",
    "BoolArray",
    "FloatArray",
    "IntArray",
    "SchedulingPolicy",
    "Status",
    "StatusCode",
    "DEFAULT_BUDGET",
    "UNASSIGNED",
    "make_assignment",
    "validate_etc",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

UNASSIGNED = -1
"""Machine index given to a task that could not be placed."""

_MAX_LISTED_TASKS = 10


class StatusCode(enum.Enum):
    """How a scheduling attempt ended."""

    SUCCESS = "success"
    """Every task was assigned to a feasible machine."""
    UNSCHEDULABLE = "unschedulable"
    """Some tasks fit no machine; the rest were assigned. The reasons name the tasks."""
    ERROR = "error"
    """The policy failed internally; the assignment must not be used."""


@dataclass(frozen=True)
class Status:
    """The outcome of a policy run: a code, human-readable reasons and the policy's name."""

    code: StatusCode
    reasons: tuple[str, ...] = ()
    plugin: str = ""

    @property
    def ok(self) -> bool:
        """Whether every task was assigned."""
        return self.code is StatusCode.SUCCESS


@dataclass(frozen=True)
class Budget:
    """Limits for anytime policies; greedy policies ignore them.

    Attributes:
        time_limit: Wall-clock seconds the policy may spend, or None for no limit.
        generations: Number of improvement iterations (GA generations), or None for no limit.
            A run bounded only by generations is deterministic for a given seed.
        seed: Seed of the policy's random number generator.

    Raises:
        InvalidSpec: A limit or the seed is negative, or the time limit is not finite.
    """

    time_limit: float | None = None
    generations: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.time_limit is not None and not (
            math.isfinite(self.time_limit) and self.time_limit >= 0
        ):
            raise InvalidSpec(
                f"time_limit ({self.time_limit}) must be a finite number of seconds >= 0"
            )
        if self.generations is not None and self.generations < 0:
            raise InvalidSpec(f"generations ({self.generations}) must be >= 0")
        if self.seed < 0:
            raise InvalidSpec(f"seed ({self.seed}) must be >= 0")


@dataclass(frozen=True, eq=False)
class Assignment:
    """A mapping of tasks to machines.

    Attributes:
        machine_of_task: Read-only int64 array of shape (T,); entry t is the machine of task t,
            or ``UNASSIGNED`` (-1) when task t fits no machine.
        makespan: Largest summed ETC over machines, counting assigned tasks only.
        status: How the run ended.
    """

    machine_of_task: IntArray
    makespan: float
    status: Status = field(default_factory=lambda: Status(StatusCode.SUCCESS))

    def __post_init__(self) -> None:
        machines = np.array(self.machine_of_task, dtype=np.int64)
        if machines.ndim != 1:
            raise InvalidSpec(f"machine_of_task must be 1-D, got shape {machines.shape}")
        machines.setflags(write=False)
        object.__setattr__(self, "machine_of_task", machines)


DEFAULT_BUDGET = Budget()
"""No limits and seed 0; each anytime policy documents what it does without limits."""


class SchedulingPolicy(Protocol):
    """Assigns a batch of independent tasks to machines.

    Implementations are registered by ``name`` in :mod:`services.scheduler.policies` and must be
    pure: no I/O, no global state, and the same output for the same input and ``Budget.seed``
    (except where a time limit ends the search).
    """

    name: ClassVar[str]

    def assign(
        self,
        etc: npt.NDArray[np.float64],
        feasible: npt.NDArray[np.bool_] | None = None,
        budget: Budget = DEFAULT_BUDGET,
    ) -> Assignment:
        """Assign every task to a feasible machine, aiming at a small makespan.

        Args:
            etc: Expected time to compute, shape (T, M), finite and non-negative.
            feasible: Boolean mask of shape (T, M); True where task t may run on machine m.
                None means every pair is feasible.
            budget: Time, iteration and seed settings for anytime policies.

        Returns:
            The assignment. Tasks with no feasible machine get -1 and the status is
            ``UNSCHEDULABLE`` with one reason per such task ("task 3 fits no node").

        Raises:
            InvalidSpec: ``etc`` or ``feasible`` is malformed (see :func:`validate_etc`).
        """
        ...


def validate_etc(
    etc: npt.ArrayLike, feasible: npt.ArrayLike | None = None
) -> tuple[FloatArray, BoolArray]:
    """Check an ETC matrix and its feasibility mask.

    Args:
        etc: Expected times to compute, shape (T, M).
        feasible: Boolean mask of shape (T, M), or None for all-feasible.

    Returns:
        ``(etc, feasible)`` as a C-contiguous float64 array and a bool array of the same shape.

    Raises:
        InvalidSpec: ``etc`` is not a 2-D numeric array, holds a negative, NaN or infinite value,
            or ``feasible`` is not a boolean array of the same shape.
    """
    try:
        matrix = np.ascontiguousarray(etc, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidSpec(f"etc must be a numeric (tasks x machines) array: {exc}") from exc
    if matrix.ndim != 2:
        raise InvalidSpec(f"etc must be a 2-D (tasks x machines) array, got shape {matrix.shape}")
    bad = ~np.isfinite(matrix)
    if bad.any():
        t, m = np.argwhere(bad)[0]
        raise InvalidSpec(f"etc[{t}, {m}] is {matrix[t, m]}; every expected time must be finite")
    if (matrix < 0).any():
        t, m = np.argwhere(matrix < 0)[0]
        raise InvalidSpec(f"etc[{t}, {m}] is {matrix[t, m]}; expected times must be >= 0")
    if feasible is None:
        return matrix, np.ones(matrix.shape, dtype=np.bool_)
    mask = np.asarray(feasible)
    if mask.dtype != np.bool_:
        raise InvalidSpec(f"feasible must be a boolean mask, got dtype {mask.dtype}")
    if mask.shape != matrix.shape:
        raise InvalidSpec(f"feasible has shape {mask.shape} but etc has shape {matrix.shape}")
    return matrix, np.ascontiguousarray(mask)


def make_assignment(
    plugin: str, etc: FloatArray, feasible: BoolArray, machine_of_task: IntArray
) -> Assignment:
    """Wrap a policy's result in an :class:`Assignment` with its makespan and status.

    Args:
        plugin: Name of the policy, recorded in the status.
        etc: Validated ETC matrix, shape (T, M).
        feasible: Validated mask, shape (T, M).
        machine_of_task: Machine per task, -1 where the task fits no machine.

    Returns:
        The assignment, ``UNSCHEDULABLE`` when some task is left at -1.
    """
    assigned = np.flatnonzero(machine_of_task >= 0)
    loads = np.bincount(
        machine_of_task[assigned],
        weights=etc[assigned, machine_of_task[assigned]],
        minlength=etc.shape[1],
    )
    makespan = float(loads.max()) if loads.size else 0.0
    unplaced = np.flatnonzero(machine_of_task < 0)
    if unplaced.size == 0:
        return Assignment(machine_of_task, makespan, Status(StatusCode.SUCCESS, plugin=plugin))
    reasons = [f"task {t} fits no node" for t in unplaced[:_MAX_LISTED_TASKS]]
    if unplaced.size > _MAX_LISTED_TASKS:
        reasons.append(f"... and {unplaced.size - _MAX_LISTED_TASKS} more tasks fit no node")
    return Assignment(
        machine_of_task,
        makespan,
        Status(StatusCode.UNSCHEDULABLE, tuple(reasons), plugin=plugin),
    )
