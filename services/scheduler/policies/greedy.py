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
special cases. None rescans the whole matrix per step: Min-min keeps every column sorted with a
lazy cursor per machine, and Max-min and Sufferage keep each task's shortlist of fast machines,
rescanning a row only when the shortlist can no longer prove which machines are best.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt

from services.scheduler.policies.base import (
    DEFAULT_BUDGET,
    UNASSIGNED,
    Assignment,
    BoolArray,
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


def _placeable_costs(etc: FloatArray, feasible: BoolArray, placeable: IntArray) -> FloatArray:
    """Return the cost matrix of the placeable tasks, sharing ``etc`` when nothing is masked."""
    if placeable.size == etc.shape[0] and feasible.all():
        return etc
    return cost_matrix(etc[placeable], feasible[placeable])


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
            machine_of_task[placeable] = self.solve(_placeable_costs(matrix, mask, placeable))
        return make_assignment(self.name, matrix, mask, machine_of_task)

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines.

        Args:
            cost: Shape (n, M); ``inf`` marks an infeasible pair and every row has a finite
                entry. It is not modified.

        Returns:
            The machine of each of the n tasks, int64.
        """
        raise NotImplementedError


class _Shortlist:
    """Each task's few fastest machines, to find its two best completion times cheaply.

    For every task the ``size`` machines with the smallest completion times are cached together
    with the next-smallest time, ``bound``. Ready times only grow, so ``bound`` stays a lower
    bound on every machine outside the shortlist. While the two best times inside the shortlist
    stay below it they are exact; only then is the whole row rescanned.
    """

    def __init__(self, cost: FloatArray, size: int = 16) -> None:
        self.cost = cost
        n, m = cost.shape
        self.size = min(size, m)
        self.machines = np.empty((n, self.size), dtype=np.int64)
        self.bound = np.full(n, np.inf)
        self._rescan(np.arange(n), np.zeros(m))

    def _rescan(self, tasks: IntArray, ready: FloatArray) -> None:
        rows = self.cost[tasks] + ready
        if self.size == rows.shape[1]:
            self.machines[tasks] = np.arange(self.size)
            return
        part = np.argpartition(rows, self.size, axis=1)
        self.machines[tasks] = part[:, : self.size]
        self.bound[tasks] = rows[np.arange(tasks.size), part[:, self.size]]

    def best_two(
        self, tasks: IntArray, ready: FloatArray
    ) -> tuple[IntArray, FloatArray, IntArray, FloatArray]:
        """Return the best machine and time and the runner-up machine and time of ``tasks``.

        Equal times go to the lowest machine index. With one machine the runner-up is ``inf``.
        """
        first, first_time, second, second_time = self._from_shortlist(tasks, ready)
        stale = second_time >= self.bound[tasks]
        if stale.any():
            self._rescan(tasks[stale], ready)
            redo = self._from_shortlist(tasks[stale], ready)
            first[stale], first_time[stale], second[stale], second_time[stale] = redo
        return first, first_time, second, second_time

    def _from_shortlist(
        self, tasks: IntArray, ready: FloatArray
    ) -> tuple[IntArray, FloatArray, IntArray, FloatArray]:
        machines = self.machines[tasks]
        times = self.cost[tasks[:, None], machines] + ready[machines]
        lowest = times.min(axis=1)
        first = np.where(times == lowest[:, None], machines, self.cost.shape[1]).min(axis=1)
        times[machines == first[:, None]] = np.inf
        runner_up = times.min(axis=1)
        second = np.where(times == runner_up[:, None], machines, self.cost.shape[1]).min(axis=1)
        return first, lowest, np.minimum(second, self.cost.shape[1] - 1), runner_up


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
        # cursor into its sorted order. Cursors move lazily: a head whose task was taken only
        # understates its column, so it is advanced when it would win a selection.
        columns = np.empty((m, n + 1))
        columns[:, :n] = cost.T
        columns[:, n] = np.inf
        # Equal values are adjacent after sorting; the lowest task index among them is found
        # when a column is selected (see _lowest_tied), so an unstable sort is enough.
        order = np.argsort(columns, axis=1)
        # Task n is a sentinel that is never taken, so no cursor runs off its column.
        taken = np.zeros(n + 1, dtype=np.bool_)
        cursor = np.zeros(m, dtype=np.int64)
        head = order[:, 0].copy()
        head_cost = columns[np.arange(m), head]
        ready = np.zeros(m)
        result = np.empty(n, dtype=np.int64)
        for _ in range(n):
            while True:
                finish = ready + head_cost
                machines = np.flatnonzero(finish == finish.min())
                stale = machines[taken[head[machines]]]
                if stale.size == 0:
                    break
                for column in stale.tolist():
                    cursor[column] = _next_free(order[column], taken, int(cursor[column]))
                    head[column] = order[column, cursor[column]]
                    head_cost[column] = columns[column, head[column]]
            firsts = [_lowest_tied(columns[j], order[j], taken, int(cursor[j])) for j in machines]
            pick = int(np.argmin(firsts))
            machine, task = int(machines[pick]), firsts[pick]
            result[task] = machine
            taken[task] = True
            ready[machine] += head_cost[machine]
        return result


def _lowest_tied(
    column: FloatArray, order: IntArray, taken: npt.NDArray[np.bool_], start: int
) -> int:
    """Return the lowest free task whose value equals that of the free task at ``start``."""
    value = column[order[start]]
    if column[order[start + 1]] != value:
        return int(order[start])
    end = start + 1
    while column[order[end]] == value:
        end += 1
    run = order[start:end]
    return int(run[~taken[run]].min())


def _next_free(order: IntArray, taken: npt.NDArray[np.bool_], start: int) -> int:
    """Return the first position at or after ``start`` whose task in ``order`` is not taken."""
    step = 64
    while True:
        free = np.flatnonzero(~taken[order[start : start + step]])
        if free.size:
            return start + int(free[0])
        start += step
        step *= 2


class MaxMin(GreedyPolicy):
    """Max-min: repeatedly place the task with the largest earliest completion time.

    Ties go to the lowest task index, then the lowest machine index.
    """

    name: ClassVar[str] = "max_min"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        n = cost.shape[0]
        ready = np.zeros(cost.shape[1])
        shortlist = _Shortlist(cost)
        everyone = np.arange(n)
        best_machine, best_time, _, _ = shortlist.best_two(everyone, ready)
        result = np.empty(n, dtype=np.int64)
        for _ in range(n):
            task = int(best_time.argmax())
            machine = int(best_machine[task])
            result[task] = machine
            ready[machine] += cost[task, machine]
            best_time[task] = -np.inf
            best_machine[task] = -1
            # Only tasks whose best machine just got busier can have a new best machine.
            stale = np.flatnonzero(best_machine == machine)
            if stale.size:
                best_machine[stale], best_time[stale], _, _ = shortlist.best_two(stale, ready)
        return result


class Sufferage(GreedyPolicy):
    """Sufferage: each pass, every machine takes the task that would suffer most without it.

    A pass considers the tasks that complete earliest on a machine and gives it the one whose
    sufferage (second-best minus best completion time) is largest. Ties go to the lowest task
    index. A task with a single feasible machine suffers infinitely.
    """

    name: ClassVar[str] = "sufferage"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        n, m = cost.shape
        ready = np.zeros(m)
        shortlist = _Shortlist(cost)
        first, first_time, second, second_time = shortlist.best_two(np.arange(n), ready)
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
            # Only tasks whose two best machines include a busier one can change their ranking.
            stale = np.flatnonzero(pending & (changed[first] | changed[second]))
            if stale.size:
                first[stale], first_time[stale], second[stale], second_time[stale] = (
                    shortlist.best_two(stale, ready)
                )


class Lpt(GreedyPolicy):
    """Longest processing time first, adapted to unrelated machines.

    Tasks are taken by decreasing smallest ETC, each to the machine where it completes earliest
    (ties to the lowest index).
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
            result: IntArray = np.arange(n, dtype=np.int64) % m
            return result
        result = np.empty(n, dtype=np.int64)
        cursor = 0
        for task in range(n):
            allowed = np.flatnonzero(finite[task])
            at = int(np.searchsorted(allowed, cursor))
            machine = int(allowed[at % allowed.size])
            result[task] = machine
            cursor = (machine + 1) % m
        return result
