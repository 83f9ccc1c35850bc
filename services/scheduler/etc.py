"""Expected-time-to-compute (ETC) matrices: file format, generator, makespan and lower bound.

An ETC matrix has one row per task and one column per machine; entry ``[t, m]`` is the expected
time machine m needs for task t. This module holds pure functions only.

References:
    T. D. Braun, H. J. Siegel, N. Beck et al., "A comparison of eleven static heuristics for
    mapping a class of independent tasks onto heterogeneous distributed computing systems",
    J. Parallel Distrib. Comput. 61(6):810-837, 2001 (the benchmark and its file format).

    S. Ali, H. J. Siegel, M. Maheswaran, D. Hensgen and S. Ali, "Representing task and machine
    heterogeneities for heterogeneous computing systems", Tamkang J. Sci. Eng. 3(3):195-207, 2000
    (the range-based generator).

    J. K. Lenstra, D. B. Shmoys and E. Tardos, "Approximation algorithms for scheduling unrelated
    parallel machines", Math. Program. 46:259-271, 1990 (the LP relaxation).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from services.scheduler.policies.base import validate_etc
from tessera.common.errors import InvalidSpec

__all__ = [
    "Consistency",
    "Heterogeneity",
    "TASK_RANGES",
    "MACHINE_RANGES",
    "generate_etc",
    "lp_lower_bound",
    "machine_loads",
    "makespan",
    "parse_etc_text",
    "read_etc",
    "write_etc",
]

Consistency = Literal["consistent", "inconsistent", "semi-consistent"]
Heterogeneity = Literal["high", "low"]

TASK_RANGES: dict[str, float] = {"high": 3000.0, "low": 100.0}
"""Upper end of the task baseline range, as used by Braun et al. 2001."""
MACHINE_RANGES: dict[str, float] = {"high": 1000.0, "low": 10.0}
"""Upper end of the machine multiplier range, as used by Braun et al. 2001."""


def _check_dimensions(tasks: int, machines: int) -> None:
    if tasks < 0:
        raise InvalidSpec(f"tasks ({tasks}) must be >= 0")
    if machines < 1:
        raise InvalidSpec(f"machines ({machines}) must be >= 1")


def parse_etc_text(
    text: str, tasks: int, machines: int, source: str = "<string>"
) -> npt.NDArray[np.float64]:
    """Parse an ETC matrix written one number per line, task-major (Braun et al. 2001).

    Value number ``t * machines + m`` (counting from 0) is ``ETC[t, m]``. Lines may end in LF or
    CRLF; blank lines are skipped and surrounding spaces ignored.

    Args:
        text: The file's contents.
        tasks: Number of tasks T.
        machines: Number of machines M.
        source: Name used in error messages, usually the file name.

    Returns:
        The (T, M) float64 matrix.

    Raises:
        InvalidSpec: A line is not a number, a value is negative, NaN or infinite, or the file
            does not hold exactly T * M values. The message names the source and line number,
            e.g. ``"u_c_hihi.0 line 17: 'abc' is not a number"``.
    """
    _check_dimensions(tasks, machines)
    values: list[float] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            value = float(line)
        except ValueError:
            raise InvalidSpec(f"{source} line {number}: {line!r} is not a number") from None
        if not math.isfinite(value):
            raise InvalidSpec(f"{source} line {number}: {line!r} is not a finite number")
        if value < 0:
            raise InvalidSpec(f"{source} line {number}: {line!r} is negative")
        values.append(value)
    expected = tasks * machines
    if len(values) != expected:
        raise InvalidSpec(
            f"{source}: expected {expected} values ({tasks} tasks x {machines} machines), "
            f"found {len(values)}"
        )
    return np.array(values, dtype=np.float64).reshape(tasks, machines)


def read_etc(path: str | os.PathLike[str], tasks: int, machines: int) -> npt.NDArray[np.float64]:
    """Read an ETC matrix file in the format of :func:`parse_etc_text`.

    Args:
        path: The file, e.g. ``u_c_hihi.0`` from the Braun et al. benchmark.
        tasks: Number of tasks T.
        machines: Number of machines M.

    Returns:
        The (T, M) float64 matrix.

    Raises:
        InvalidSpec: The file is malformed; the message names the file and line.
        OSError: The file cannot be read.
    """
    file = Path(path)
    return parse_etc_text(file.read_text(encoding="ascii"), tasks, machines, source=file.name)


def write_etc(path: str | os.PathLike[str], etc: npt.ArrayLike) -> None:
    """Write an ETC matrix one number per line, task-major, LF line ends.

    Values are written with ``repr`` so that :func:`read_etc` restores them exactly.

    Raises:
        InvalidSpec: ``etc`` is not 2-D.
        OSError: The file cannot be written.
    """
    matrix = np.asarray(etc, dtype=np.float64)
    if matrix.ndim != 2:
        raise InvalidSpec(f"etc must be a 2-D (tasks x machines) array, got shape {matrix.shape}")
    lines = "".join(f"{value!r}\n" for value in matrix.ravel().tolist())
    Path(path).write_text(lines, encoding="ascii")


def generate_etc(
    tasks: int,
    machines: int,
    *,
    consistency: Consistency,
    task_heterogeneity: Heterogeneity,
    machine_heterogeneity: Heterogeneity,
    seed: int,
) -> npt.NDArray[np.float64]:
    """Generate an ETC matrix with the range-based method of Ali et al. (2000).

    Each task draws a baseline ``b_t ~ U[1, R_task)`` and each entry is
    ``b_t * U[1, R_machine)``, with ``R_task`` 3000 (high) or 100 (low) and ``R_machine`` 1000
    (high) or 10 (low), as in Braun et al. (2001). Consistent matrices have every row sorted
    ascending (machine 0 is fastest for every task); semi-consistent ones have the even columns
    of every row sorted and the odd columns left as drawn; inconsistent ones are left as drawn.

    Args:
        tasks: Number of tasks T (>= 0).
        machines: Number of machines M (>= 1).
        consistency: ``"consistent"``, ``"semi-consistent"`` or ``"inconsistent"``.
        task_heterogeneity: ``"high"`` or ``"low"``.
        machine_heterogeneity: ``"high"`` or ``"low"``.
        seed: Seed for ``numpy.random.default_rng``; the same arguments give the same matrix.

    Returns:
        The (T, M) float64 matrix.

    Raises:
        InvalidSpec: A dimension or option is out of range.
    """
    _check_dimensions(tasks, machines)
    if task_heterogeneity not in TASK_RANGES:
        raise InvalidSpec(f"task_heterogeneity {task_heterogeneity!r} must be 'high' or 'low'")
    if machine_heterogeneity not in MACHINE_RANGES:
        raise InvalidSpec(
            f"machine_heterogeneity {machine_heterogeneity!r} must be 'high' or 'low'"
        )
    if consistency not in ("consistent", "inconsistent", "semi-consistent"):
        raise InvalidSpec(
            f"consistency {consistency!r} must be 'consistent', 'inconsistent' or 'semi-consistent'"
        )
    rng = np.random.default_rng(seed)
    baseline = rng.uniform(1.0, TASK_RANGES[task_heterogeneity], size=(tasks, 1))
    etc = baseline * rng.uniform(1.0, MACHINE_RANGES[machine_heterogeneity], (tasks, machines))
    if consistency == "consistent":
        etc.sort(axis=1)
    elif consistency == "semi-consistent":
        etc[:, 0::2] = np.sort(etc[:, 0::2], axis=1)
    return etc


def _check_assignment(
    etc: npt.ArrayLike, assignment: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    matrix = np.asarray(etc, dtype=np.float64)
    machine_of_task = np.asarray(assignment)
    if matrix.ndim != 2:
        raise InvalidSpec(f"etc must be a 2-D (tasks x machines) array, got shape {matrix.shape}")
    if machine_of_task.shape != (matrix.shape[0],):
        raise InvalidSpec(
            f"assignment has shape {machine_of_task.shape} but etc has {matrix.shape[0]} tasks"
        )
    if machine_of_task.size and not np.issubdtype(machine_of_task.dtype, np.integer):
        raise InvalidSpec(
            f"assignment must hold machine indices, got dtype {machine_of_task.dtype}"
        )
    machine_of_task = machine_of_task.astype(np.int64, copy=False)
    bad = (machine_of_task < -1) | (machine_of_task >= matrix.shape[1])
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise InvalidSpec(
            f"assignment[{t}] is {machine_of_task[t]}; machines are 0..{matrix.shape[1] - 1} "
            "(-1 for unassigned)"
        )
    return matrix, machine_of_task


def machine_loads(etc: npt.ArrayLike, assignment: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return the summed ETC of the tasks on each machine.

    Args:
        etc: The (T, M) ETC matrix.
        assignment: Machine index per task, shape (T,); -1 marks an unassigned task, which
            counts nowhere.

    Returns:
        Float64 array of shape (M,).

    Raises:
        InvalidSpec: Shapes disagree or a machine index is out of range.
    """
    matrix, machine_of_task = _check_assignment(etc, assignment)
    placed = np.flatnonzero(machine_of_task >= 0)
    return np.bincount(
        machine_of_task[placed],
        weights=matrix[placed, machine_of_task[placed]],
        minlength=matrix.shape[1],
    ).astype(np.float64)


def makespan(etc: npt.ArrayLike, assignment: npt.ArrayLike) -> float:
    """Return the largest machine load of an assignment (all machines free at time 0).

    Raises:
        InvalidSpec: Shapes disagree or a machine index is out of range.
    """
    loads = machine_loads(etc, assignment)
    return float(loads.max()) if loads.size else 0.0


def lp_lower_bound(etc: npt.ArrayLike, feasible: npt.ArrayLike | None = None) -> float:
    """Return a lower bound on the makespan from the LP relaxation (Lenstra et al. 1990).

    The LP lets every task be split across its feasible machines (fractions summing to 1) and
    minimises the largest machine load. The result is the larger of that optimum and the largest
    smallest-ETC of any single task, which is also a bound. Tasks with no feasible machine are
    left out. Solved with HiGHS through ``scipy.optimize.linprog`` on sparse matrices (a
    2048 x 64 matrix takes well under a second); scipy is only needed when this is called.

    Args:
        etc: The (T, M) ETC matrix.
        feasible: Boolean (T, M) mask, or None for all-feasible.

    Returns:
        No assignment of the placeable tasks has a smaller makespan than this.

    Raises:
        InvalidSpec: ``etc`` or ``feasible`` is malformed.
        RuntimeError: The LP solver failed.
    """
    from scipy import sparse
    from scipy.optimize import linprog

    matrix, mask = validate_etc(etc, feasible)
    placeable = mask.any(axis=1)
    matrix, mask = matrix[placeable], mask[placeable]
    if matrix.shape[0] == 0:
        return 0.0
    tasks, machines = np.nonzero(mask)
    n_vars = tasks.size + 1
    load_column = n_vars - 1
    costs = np.zeros(n_vars)
    costs[load_column] = 1.0
    pairs = np.arange(tasks.size)
    a_eq = sparse.csr_array((np.ones(tasks.size), (tasks, pairs)), shape=(matrix.shape[0], n_vars))
    a_ub = sparse.csr_array(
        (
            np.concatenate([matrix[tasks, machines], -np.ones(matrix.shape[1])]),
            (
                np.concatenate([machines, np.arange(matrix.shape[1])]),
                np.concatenate([pairs, np.full(matrix.shape[1], load_column)]),
            ),
        ),
        shape=(matrix.shape[1], n_vars),
    )
    result = linprog(
        costs,
        A_ub=a_ub,
        b_ub=np.zeros(matrix.shape[1]),
        A_eq=a_eq,
        b_eq=np.ones(matrix.shape[0]),
        bounds=(0, None),
        method="highs",
    )
    if result.status != 0:
        raise RuntimeError(f"LP relaxation failed: {result.message}")
    largest_task = float(np.where(mask, matrix, np.inf).min(axis=1).max())
    return max(float(result.fun), largest_task)
