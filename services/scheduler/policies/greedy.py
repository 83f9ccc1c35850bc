"""Greedy batch-mapping heuristics for independent tasks on heterogeneous machines.

* Min-min and Max-min: O. H. Ibarra and C. E. Kim, "Heuristic algorithms for scheduling
  independent tasks on nonidentical processors", J. ACM 24(2):280-289, 1977; compared on the
  ETC benchmark by T. D. Braun et al., "A comparison of eleven static heuristics for mapping a
  class of independent tasks onto heterogeneous distributed computing systems", J. Parallel
  Distrib. Comput. 61(6):810-837, 2001.
* Sufferage: M. Maheswaran, S. Ali, H. J. Siegel, D. Hensgen and R. F. Freund, "Dynamic matching
  and scheduling of a class of independent tasks onto heterogeneous computing systems", HCW 1999.
* LPT: R. L. Graham, "Bounds on multiprocessing timing anomalies", SIAM J. Appl. Math.
  17(2):416-429, 1969, adapted to unrelated machines (a task's size is its smallest ETC, and each
  task goes to the machine where it completes first).
* Round robin: the baseline that ignores the ETC values.

Every policy works on a cost matrix with ``inf`` at infeasible pairs, so feasibility needs no
special cases. Min-min, Max-min and Sufferage keep each unassigned task's best completion time and
recompute it only for the tasks whose best machine just received work, which makes a selection
one vectorised argmin instead of a scan of the whole matrix.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from services.scheduler.policies.base import (
    DEFAULT_BUDGET,
    UNASSIGNED,
    Assignment,
    Budget,
    FloatArray,
    IntArray,
    make_assignment,
    validate_etc,
)

__all__ = [
    "GreedyPolicy",
    "Lpt",
    "MaxMin",
    "MinMin",
    "RoundRobin",
    "Sufferage",
    "cost_matrix",
]


def cost_matrix(etc: FloatArray, feasible: npt.NDArray[np.bool_]) -> FloatArray:
    """Return a copy of ``etc`` with ``inf`` wherever ``feasible`` is False."""
    return np.where(feasible, etc, np.inf)


class GreedyPolicy:
    """Shared driver: validate, drop the tasks that fit no machine, solve the rest.

    Subclasses override :meth:`solve` only.
    """

    name: ClassVar[str] = ""

    def assign(
        self,
        etc: npt.NDArray[np.float64],
        feasible: npt.NDArray[np.bool_] | None = None,
        budget: Budget = DEFAULT_BUDGET,
    ) -> Assignment:
        """Assign every task that fits some machine; see ``SchedulingPolicy.assign``.

        The budget is ignored: greedy policies run to completion in polynomial time.

        Raises:
            InvalidSpec: ``etc`` or ``feasible`` is malformed.
        """
        matrix, mask = validate_etc(etc, feasible)
        machine_of_task = np.full(matrix.shape[0], UNASSIGNED, dtype=np.int64)
        placeable = np.flatnonzero(mask.any(axis=1))
        if placeable.size:
            cost = cost_matrix(matrix[placeable], mask[placeable])
            machine_of_task[placeable] = self.solve(cost)
        return make_assignment(self.name, matrix, mask, machine_of_task)

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines.

        Args:
            cost: Shape (n, M); ``inf`` marks an infeasible pair and every row has a finite
                entry.

        Returns:
            The machine of each of the n tasks, int64.
        """
        raise NotImplementedError


def _ranked(rows: FloatArray) -> tuple[IntArray, FloatArray, IntArray, FloatArray, FloatArray]:
    """Return, per row, the best column and value, the runner-up column and value, and the
    third-smallest value (lowest index first among equal values; ``inf`` past the last column).

    ``rows`` is scratch space and is modified.
    """
    ar = np.arange(rows.shape[0])
    first = rows.argmin(axis=1)
    first_value = rows[ar, first]
    rows[ar, first] = np.inf
    second = rows.argmin(axis=1)
    second_value = rows[ar, second]
    rows[ar, second] = np.inf
    return first, first_value, second, second_value, rows.min(axis=1)


class MinMin(GreedyPolicy):
    """Min-min: repeatedly place the task with the smallest earliest completion time.

    Ties go to the lowest task index, then the lowest machine index.
    """

    name: ClassVar[str] = "min_min"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        n, m = cost.shape
        # The smallest completion time on machine j is ready[j] plus the smallest unassigned
        # entry of column j, and that entry does not depend on ready[j]. So each column keeps a
        # cursor into its sorted order, which moves only past tasks that were assigned.
        columns = np.empty((m, n + 1))
        columns[:, :n] = cost.T
        columns[:, n] = np.inf
        order = np.argsort(columns, axis=1)
        heads = np.take_along_axis(columns, order, axis=1)
        tied = ((heads[:, 1:] == heads[:, :-1]) & np.isfinite(heads[:, 1:])).any(axis=1)
        for column in np.flatnonzero(tied):
            order[column] = np.argsort(columns[column], kind="stable")
        del heads
        # Task n is a sentinel that is never assigned, so no cursor runs off its column.
        taken = np.zeros(n + 1, dtype=np.bool_)
        cursor = np.zeros(m, dtype=np.int64)
        lines = np.arange(m)
        head = order[:, 0].copy()
        head_cost = columns[lines, head]
        ready = np.zeros(m)
        result = np.empty(n, dtype=np.int64)
        for _ in range(n):
            finish = ready + head_cost
            machine = int(finish.argmin())
            ties = np.flatnonzero(finish == finish[machine])
            if ties.size > 1:
                machine = int(ties[head[ties].argmin()])
            task = int(head[machine])
            result[task] = machine
            taken[task] = True
            ready[machine] += head_cost[machine]
            moving = np.flatnonzero(head == task)
            while moving.size:
                cursor[moving] += 1
                head[moving] = order[moving, cursor[moving]]
                head_cost[moving] = columns[moving, head[moving]]
                moving = moving[taken[head[moving]]]
        return result


class MaxMin(GreedyPolicy):
    """Max-min: repeatedly place the task with the largest earliest completion time.

    Ties go to the lowest task index, then the lowest machine index.
    """

    name: ClassVar[str] = "max_min"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        n = cost.shape[0]
        ready = np.zeros(cost.shape[1])
        # Ready times only grow, so a runner-up time once computed stays a lower bound on the
        # best time elsewhere; a task keeps its machine while its time stays below that bound.
        best_machine, best_time, _, runner_up, _ = _ranked(cost.copy())
        result = np.empty(n, dtype=np.int64)
        for _ in range(n):
            task = int(best_time.argmax())
            machine = int(best_machine[task])
            result[task] = machine
            ready[machine] += cost[task, machine]
            best_time[task] = -np.inf
            best_machine[task] = -1
            stale = np.flatnonzero(best_machine == machine)
            if stale.size == 0:
                continue
            time_here = cost[stale, machine] + ready[machine]
            kept = time_here < runner_up[stale]
            best_time[stale[kept]] = time_here[kept]
            moved = stale[~kept]
            if moved.size:
                rows = cost[moved] + ready
                best_machine[moved], best_time[moved], _, runner_up[moved], _ = _ranked(rows)
        return result


class Sufferage(GreedyPolicy):
    """Sufferage: in each pass every machine takes, among the tasks that complete earliest on it,
    the one that would suffer most (second-best minus best completion time) if denied it.

    Ties go to the lowest task index. A task with a single feasible machine suffers infinitely.
    """

    name: ClassVar[str] = "sufferage"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        n, m = cost.shape
        ready = np.zeros(m)
        # As in Min-min, the stored third-best time is a lower bound that lets most tasks keep
        # their two best machines without a scan of their whole row.
        first, first_time, second, second_time, third_bound = _ranked(cost.copy())
        pending = np.ones(n, dtype=np.bool_)
        result = np.empty(n, dtype=np.int64)
        while True:
            tasks = np.flatnonzero(pending)
            if tasks.size == 0:
                return result
            with np.errstate(invalid="ignore"):
                suffer = second_time[tasks] - first_time[tasks]
            # Group by best machine; inside a group the largest sufferage, then lowest index, wins.
            order = np.lexsort((tasks, -suffer, first[tasks]))
            grouped = first[tasks[order]]
            leaders = np.ones(order.size, dtype=np.bool_)
            leaders[1:] = grouped[1:] != grouped[:-1]
            winners = tasks[order[leaders]]
            won = first[winners]
            result[winners] = won
            ready[won] += cost[winners, won]
            pending[winners] = False
            changed = np.zeros(m, dtype=np.bool_)
            changed[won] = True
            stale = np.flatnonzero(pending & (changed[first] | changed[second]))
            if stale.size == 0:
                continue
            a, b = first[stale], second[stale]
            time_a = cost[stale, a] + ready[a]
            time_b = cost[stale, b] + ready[b]
            swap = (time_b < time_a) | ((time_b == time_a) & (b < a))
            low = np.where(swap, time_b, time_a)
            high = np.where(swap, time_a, time_b)
            kept = high < third_bound[stale]
            keep = stale[kept]
            first[keep] = np.where(swap, b, a)[kept]
            second[keep] = np.where(swap, a, b)[kept]
            first_time[keep] = low[kept]
            second_time[keep] = high[kept]
            moved = stale[~kept]
            if moved.size:
                rows = cost[moved] + ready
                (
                    first[moved],
                    first_time[moved],
                    second[moved],
                    second_time[moved],
                    third_bound[moved],
                ) = _ranked(rows)


class Lpt(GreedyPolicy):
    """Longest processing time first: tasks by decreasing smallest ETC, each to the machine where
    it completes earliest (ties to the lowest index).
    """

    name: ClassVar[str] = "lpt"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        n = cost.shape[0]
        ready = np.zeros(cost.shape[1])
        order = np.lexsort((np.arange(n), -cost.min(axis=1)))
        result = np.empty(n, dtype=np.int64)
        for task in order:
            row = cost[task]
            machine = int((ready + row).argmin())
            result[task] = machine
            ready[machine] += row[machine]
        return result


class RoundRobin(GreedyPolicy):
    """Round robin: task i goes to the next feasible machine after the previous task's machine.

    With every pair feasible, task i runs on machine ``i mod M``. A baseline only.
    """

    name: ClassVar[str] = "round_robin"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        n, m = cost.shape
        finite = np.isfinite(cost)
        if finite.all():
            return np.arange(n, dtype=np.int64) % m
        result = np.empty(n, dtype=np.int64)
        cursor = 0
        for task in range(n):
            allowed = np.flatnonzero(finite[task])
            at = int(np.searchsorted(allowed, cursor))
            machine = int(allowed[at % allowed.size])
            result[task] = machine
            cursor = (machine + 1) % m
        return result
