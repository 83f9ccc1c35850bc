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
special cases. None rescans the whole matrix per step, and all give exactly the textbook result
(ties to the lowest task, then the lowest machine). Min-min keeps every column sorted with a
lazy cursor per machine. Max-min keeps an upper bound on each task's earliest completion time
and rescans a task only when its bound could be the largest. Sufferage keeps each task's
shortlist of fast machines; on a cost matrix whose rows are sorted (consistent, machines
fastest first) it instead uses that only machines less loaded than faster ones can be a task's
best two, and that idle machines rank alike for every task.
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

_RESCAN_BLOCK = 64
"""Max-min rescans stale tasks at once up to this many; more are only marked inexact."""

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

    Ready times only grow, so a task's time on any machine bounds its earliest completion time
    from above, and equals it while that machine is its best and no busier than when checked.
    A task whose best machine gets busier is not rescanned but only marked inexact, with its
    time on that machine and on the least-loaded machine as the bound. If the largest bound
    belongs to an exact task, that task has the largest earliest completion time, and the
    lowest index among equal ones since an earlier task with an equal time would have at least
    that bound; so only inexact tasks whose bound reaches the best exact value are rescanned.
    """

    name: ClassVar[str] = "max_min"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        n, m = cost.shape
        ready = np.zeros(m)
        best = cost.argmin(axis=1)
        finish = cost[np.arange(n), best]
        exact = np.ones(n, dtype=np.bool_)
        loose = 0
        columns: FloatArray | None = None
        result = np.empty(n, dtype=np.int64)

        # With sorted rows a task's best machine is less loaded than every faster machine (a
        # faster machine that is no busier finishes no later and wins ties), so only those few
        # need a look.
        sorted_rows = _rows_sorted(cost)

        def rescan(tasks: IntArray) -> None:
            if sorted_rows:
                machines = np.flatnonzero(_records(ready))
                rows = cost[np.ix_(tasks, machines)] + ready[machines]
                where = rows.argmin(axis=1)
                best[tasks] = machines[where]
            else:
                rows = cost[tasks] + ready
                where = rows.argmin(axis=1)
                best[tasks] = where
            finish[tasks] = rows[np.arange(tasks.size), where]
            exact[tasks] = True

        for _ in range(n):
            if loose and columns is not None:
                idle = int(ready.argmin())
                bound = np.minimum(finish, columns[idle] + ready[idle])
                task = int(bound.argmax())
                while not exact[task]:
                    top = np.where(exact, bound, -np.inf).max()
                    loose_tasks = np.flatnonzero((bound >= top) & ~exact)
                    if loose_tasks.size > _RESCAN_BLOCK:
                        keep = np.argpartition(bound[loose_tasks], -_RESCAN_BLOCK)[-_RESCAN_BLOCK:]
                        loose_tasks = loose_tasks[keep]
                    rescan(loose_tasks)
                    loose -= loose_tasks.size
                    bound[loose_tasks] = finish[loose_tasks]
                    task = int(bound.argmax())
            else:
                task = int(finish.argmax())
            machine = int(best[task])
            result[task] = machine
            ready[machine] += cost[task, machine]
            finish[task] = -np.inf
            best[task] = -1
            stale = np.flatnonzero(best == machine)
            if stale.size == 0:
                continue
            if stale.size <= _RESCAN_BLOCK:
                loose -= stale.size - int(np.count_nonzero(exact[stale]))
                rescan(stale)
            else:
                if columns is None:
                    columns = np.ascontiguousarray(cost.T)
                loose += int(np.count_nonzero(exact[stale]))
                finish[stale] = columns[machine][stale] + ready[machine]
                exact[stale] = False
        return result


class Sufferage(GreedyPolicy):
    """Sufferage: each pass, every machine takes the task that would suffer most without it.

    A pass considers the tasks that complete earliest on a machine and gives it the one whose
    sufferage (second-best minus best completion time) is largest. Ties go to the lowest task
    index. A task with a single feasible machine suffers infinitely.

    When every row of the cost matrix is non-decreasing (a consistent matrix with its machines
    in speed order, as Braun et al. generate them) a faster path is exact; see
    :func:`_sufferage_sorted`.
    """

    name: ClassVar[str] = "sufferage"

    def solve(self, cost: FloatArray) -> IntArray:
        """Map tasks to machines; see :meth:`GreedyPolicy.solve`."""
        if _rows_sorted(cost):
            return _sufferage_sorted(cost)
        return _sufferage_shortlist(cost)


def _pass_winners(tasks: IntArray, first: IntArray, suffer: FloatArray, m: int) -> IntArray:
    """Return, for every machine that is some task's first, the task that suffers most.

    Equal sufferages go to the lowest task index; the result is sorted by machine.
    """
    best = np.full(m, -np.inf)
    np.maximum.at(best, first, suffer)
    top = suffer == best[first]
    none = np.iinfo(np.int64).max
    pick = np.full(m, none)
    np.minimum.at(pick, first[top], tasks[top])
    winners: IntArray = pick[pick != none]
    return winners


def _sufferage_shortlist(cost: FloatArray) -> IntArray:
    """Sufferage on any cost matrix: each task's two best machines come from a shortlist."""
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
        winners = _pass_winners(tasks, first[tasks], suffer, m)
        won = first[winners]
        result[winners] = won
        ready[won] += cost[winners, won]
        pending[winners] = False
        changed = np.zeros(m, dtype=np.bool_)
        changed[won] = True
        # Only tasks whose two best machines include a busier one can change their ranking.
        stale = np.flatnonzero(pending & (changed[first] | changed[second]))
        if stale.size:
            first[stale], first_time[stale], second[stale], second_time[stale] = shortlist.best_two(
                stale, ready
            )


def _rows_sorted(cost: FloatArray) -> bool:
    """Whether every row of ``cost`` is non-decreasing (machines listed fastest first)."""
    if cost.shape[0] == 0 or cost.shape[1] < 2:
        return True
    # One row first: most unsorted matrices are rejected without a pass over all of them.
    if not (cost[0, 1:] >= cost[0, :-1]).all():
        return False
    return bool((cost[:, 1:] >= cost[:, :-1]).all())


def _records(ready: FloatArray) -> BoolArray:
    """Machines less loaded than every machine with a lower index."""
    earlier = np.full(ready.size, np.inf)
    np.minimum.accumulate(ready[:-1], out=earlier[1:])
    record: BoolArray = ready < earlier
    return record


def _runner_ups(ready: FloatArray) -> tuple[IntArray, IntArray]:
    """Machines that can be second best only behind one record, and that record.

    With sorted cost rows a machine with a lower index that is no busier finishes every task no
    later and wins ties. So a machine is a task's best only if it is a record (less loaded than
    every machine before it), and second best only if it is a record or exactly one machine
    before it is no busier, which is then the last record before it and must be the task's
    best. Returned in increasing order of machine, hence of record.
    """
    m = ready.size
    record = _records(ready)
    last = np.where(record, np.arange(m), -1)
    last_record = np.full(m, -1)
    np.maximum.accumulate(last[:-1], out=last_record[1:])
    earlier = np.full(m, np.inf)
    np.minimum.accumulate(ready[:-1], out=earlier[1:])
    # The record before the last one: the running minimum just before the last record.
    record_before = np.where(last_record >= 0, earlier[np.maximum(last_record, 0)], np.inf)
    others = np.where(record, np.inf, ready)
    other_earlier = np.full(m, np.inf)
    np.minimum.accumulate(others[:-1], out=other_earlier[1:])
    runner_up = ~record & (ready < other_earlier) & (ready < record_before)
    machines = np.flatnonzero(runner_up)
    owners: IntArray = last_record[machines]
    return machines, owners


def _best_two(
    times: FloatArray, machines: IntArray
) -> tuple[IntArray, FloatArray, IntArray, FloatArray]:
    """Best and runner-up machine and time per column of ``times`` (rows follow ``machines``).

    ``machines`` is increasing, so equal times go to the lower machine index. With one machine
    the runner-up is that machine at ``inf``. ``times`` is modified.
    """
    where = np.arange(times.shape[1])
    best = times.argmin(axis=0)
    best_time = times[best, where]
    times[best, where] = np.inf
    runner = times.argmin(axis=0)
    return machines[best], best_time, machines[runner], times[runner, where]


def _settle_best_two(
    columns: FloatArray,
    ready: FloatArray,
    tasks: IntArray,
    records: IntArray,
    times: FloatArray,
    first: IntArray,
    first_time: FloatArray,
    second: IntArray,
    second_time: FloatArray,
) -> None:
    """Store the exact best two machines of ``tasks`` when every row of costs is sorted.

    ``times`` holds the tasks' times on the ``records`` (one column per task) and is modified.
    The best machine is a record; the runner-up is a record or a runner-up of the best one
    (see :func:`_runner_ups`), which only the tasks whose best owns runner-ups need to check.
    """
    if tasks.size == 0:
        return
    best, best_time, runner, runner_time = _best_two(times, records)
    machines, owners = _runner_ups(ready)
    if machines.size:
        low = np.searchsorted(owners, best, side="left")
        count = np.searchsorted(owners, best, side="right") - low
        if count.any():
            row = np.repeat(np.arange(tasks.size), count)
            offset = np.arange(row.size) - np.repeat(np.cumsum(count) - count, count)
            candidate = machines[np.repeat(low, count) + offset]
            candidate_time = columns[candidate, tasks[row]] + ready[candidate]
            lowest = np.full(tasks.size, np.inf)
            np.minimum.at(lowest, row, candidate_time)
            hit = candidate_time == lowest[row]
            lowest_at = np.full(tasks.size, ready.size)
            np.minimum.at(lowest_at, row[hit], candidate[hit])
            better = (lowest < runner_time) | ((lowest == runner_time) & (lowest_at < runner))
            runner[better] = lowest_at[better]
            runner_time[better] = lowest[better]
    first[tasks] = best
    first_time[tasks] = best_time
    second[tasks] = runner
    second_time[tasks] = runner_time


def _sufferage_sorted(cost: FloatArray) -> IntArray:
    """Sufferage on a cost matrix whose rows are all non-decreasing; same result, less work.

    Such a matrix (consistent, machines fastest first) makes every task rank idle machines alike,
    and each pass loads the machine that is almost every task's best, so the general method
    would recompute nearly every task. Two facts avoid that. First, a machine preceded by two
    machines that are no busier is never a task's best or second best (:func:`_runner_ups`);
    in particular no machine is anyone's best while a faster one is idle, so the busy machines
    are always the fastest ones. Second, on an idle machine a task takes exactly its ETC, so the
    first two idle machines are every task's two best idle ones, and they are its two best
    overall as long as a lower bound on its time on the busy machines is not below them; ready
    times only grow, so the bound stays valid and only drops when a machine turns busy. Tasks
    that pass this test need no other work; the others keep their exact best two, recomputed
    over the few candidate machines only when one of those two machines gets busier.
    """
    n, m = cost.shape
    columns = np.ascontiguousarray(cost.T)
    ready = np.zeros(m)
    first = np.zeros(n, dtype=np.int64)
    first_time = np.zeros(n)
    second = np.zeros(n, dtype=np.int64)
    second_time = np.zeros(n)
    on_idle = np.zeros(n, dtype=np.bool_)
    busy_bound = np.full(n, np.inf)
    pending = np.ones(n, dtype=np.bool_)
    result = np.empty(n, dtype=np.int64)
    stale = np.arange(n)
    idle_moved = True
    idle = 0
    idle_time = after_time = gap = np.zeros(n)
    remaining = n
    while remaining:
        if idle_moved:
            # Every task on the old idle pair, and every stale one, is tested on the new pair.
            while idle < m and ready[idle] > 0:
                idle += 1
            check_mask = on_idle & pending
            check_mask[stale] = True
            on_idle[:] = False
            if idle < m:
                idle_time = columns[idle]
                after_time = columns[idle + 1] if idle + 1 < m else np.full(n, np.inf)
                with np.errstate(invalid="ignore"):
                    # inf - inf only where the idle machine cannot take the task at all.
                    gap = after_time - idle_time
                fits = (idle_time < busy_bound) & (after_time <= busy_bound)
                on_idle = check_mask & fits
                check_mask &= ~fits
            need = np.flatnonzero(check_mask)
        else:
            # The idle pair and the bounds are unchanged: only stale tasks may join it.
            need = stale
            if idle < m and stale.size:
                fits = (idle_time[stale] < busy_bound[stale]) & (
                    after_time[stale] <= busy_bound[stale]
                )
                on_idle[stale[fits]] = True
                need = stale[~fits]
        if need.size:
            records = np.flatnonzero(_records(ready))
            times = columns[records[:, None], need] + ready[records][:, None]
            if idle < m:
                # Make the bound exact (every busy machine is beaten by a busy record); where it
                # now proves the idle pair, that is all to do.
                busy = ready[records] > 0
                busy_bound[need] = np.where(busy[:, None], times, np.inf).min(axis=0)
                back = (idle_time[need] < busy_bound[need]) & (after_time[need] <= busy_bound[need])
                on_idle[need[back]] = True
                need = need[~back]
                times = times[:, ~back]
            _settle_best_two(
                columns, ready, need, records, times, first, first_time, second, second_time
            )
        others = np.flatnonzero(pending & ~on_idle)
        with np.errstate(invalid="ignore"):
            suffer = second_time[others] - first_time[others]
        group = first[others]
        if idle < m and on_idle.any():
            # All tasks on the idle pair share one group; only its best member can win it.
            top = int(np.where(on_idle, gap, -np.inf).argmax())
            others = np.append(others, top)
            group = np.append(group, idle)
            suffer = np.append(suffer, gap[top])
        winners = _pass_winners(others, group, suffer, m)
        won = np.where(on_idle[winners], idle, first[winners])
        turned = won[ready[won] == 0]
        result[winners] = won
        ready[won] += cost[winners, won]
        pending[winners] = False
        on_idle[winners] = False
        remaining -= winners.size
        turned = turned[ready[turned] > 0]
        idle_moved = turned.size > 0
        for machine in turned.tolist():
            np.minimum(busy_bound, columns[machine] + ready[machine], out=busy_bound)
        changed = np.zeros(m, dtype=np.bool_)
        changed[won] = True
        others = np.flatnonzero(pending & ~on_idle)
        stale = others[changed[first[others]] | changed[second[others]]]
        # A best machine that got busier but still beats the unchanged runner-up stays best.
        best = first[stale]
        moved = changed[best] & ~changed[second[stale]]
        if moved.any():
            kept = stale[moved]
            now = columns[best[moved], kept] + ready[best[moved]]
            stays = (now < second_time[kept]) | (
                (now == second_time[kept]) & (best[moved] < second[kept])
            )
            first_time[kept[stays]] = now[stays]
            settled = np.zeros(stale.size, dtype=np.bool_)
            settled[np.flatnonzero(moved)[stays]] = True
            stale = stale[~settled]
    return result


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
