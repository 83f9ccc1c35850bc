"""A memetic genetic algorithm for mapping independent tasks onto heterogeneous machines.

The chromosome is the machine of every task, as in the GA of T. D. Braun et al., "A comparison
of eleven static heuristics for mapping a class of independent tasks onto heterogeneous
distributed computing systems", J. Parallel Distrib. Comput. 61(6):810-837, 2001. Like the
cellular memetic GA of F. Xhafa, E. Alba, B. Dorronsoro and B. Duran, "Efficient batch job
scheduling in grids using cellular memetic algorithms", J. Math. Model. Algorithms 7:217-236,
2008, every offspring is improved by a local search; here the search is steepest descent on the
busiest machine over all moves and swaps, evaluated at once with numpy.

The initial population holds the Min-min, Sufferage and LPT schedules and schedules built from
machine prices: a multiplicative-weights ascent on the dual of the LP relaxation (Lenstra,
Shmoys and Tardos, Math. Program. 46:259-271, 1990) sends every task to the machine where its
price-weighted time is smallest, and different price vectors give different near-balanced
schedules. The last quarter of the budget is an iterated local search on the best schedule
(H. R. Lourenco, O. C. Martin and T. Stutzle, "Iterated local search", Handbook of
Metaheuristics, 2003) that kicks a few tasks and descends again.

The work scales with the instance: the price ascent does a few updates per task and stops when
the prices only revisit known schedules, tiny instances keep a smaller population, and a run
ends early once its best schedule meets a lower bound or stops improving for a number of
generations proportional to the instance size, so that a scheduler re-planning small batches
pays milliseconds rather than the full budget.
"""

from __future__ import annotations

import time
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
from services.scheduler.policies.greedy import Lpt, MinMin, Sufferage, cost_matrix
from tessera.common.errors import InvalidSpec

__all__ = ["Genetic", "local_search", "price_directed_schedules"]

_RELATIVE_GAIN = 1e-12
"""A step must lower the makespan by this fraction, so rounding noise cannot cause cycles."""

_PRICE_UPDATES_PER_TASK = 4
"""Price updates per task at most; 2048 for the 512 tasks of a Braun instance."""

_PRICE_UPDATES_PER_GENERATION = 10
"""Price updates per generation of the budget at most; 2000 for the default 200 generations."""

_PRICE_STALL = 25
"""The price ascent stops once this many updates in a row induce only schedules already seen."""


def _loads(cost: FloatArray, machine_of_task: IntArray) -> FloatArray:
    tasks = np.arange(machine_of_task.size)
    return np.bincount(
        machine_of_task, weights=cost[tasks, machine_of_task], minlength=cost.shape[1]
    ).astype(np.float64)


def local_search(
    cost: FloatArray, machine_of_task: IntArray, loads: FloatArray, max_steps: int = 1_000_000
) -> int:
    """Lower the makespan by steepest descent on the busiest machine, in place.

    Each step evaluates every move of a task from the busiest machine b to another machine and
    every swap of a task on b with a task elsewhere, and applies the one whose two machines end
    with the smallest larger load, if that is below the current makespan. Infinite costs
    (infeasible pairs) are never chosen.

    Args:
        cost: Shape (n, M), ``inf`` where infeasible.
        machine_of_task: Machine per task; updated in place.
        loads: Load per machine matching ``machine_of_task``; updated in place.
        max_steps: Upper bound on the number of steps.

    Returns:
        The number of steps applied.
    """
    machines = cost.shape[1]
    for step in range(max_steps):
        busiest = int(loads.argmax())
        makespan = loads[busiest]
        mine = np.flatnonzero(machine_of_task == busiest)
        if mine.size == 0 or makespan <= 0:
            return step
        remaining = makespan - cost[mine, busiest]
        arrivals = loads + cost[mine]
        arrivals[:, busiest] = np.inf
        moves = np.maximum(arrivals, remaining[:, None])
        best_move = int(moves.argmin())
        move_value = moves.flat[best_move]
        theirs = np.flatnonzero(machine_of_task != busiest)
        swap_value = np.inf
        best_swap = 0
        if theirs.size:
            where = machine_of_task[theirs]
            here = remaining[:, None] + cost[theirs, busiest]
            there = (loads[where] - cost[theirs, where]) + cost[mine[:, None], where]
            swaps = np.maximum(here, there)
            best_swap = int(swaps.argmin())
            swap_value = swaps.flat[best_swap]
        if min(move_value, swap_value) >= makespan * (1 - _RELATIVE_GAIN):
            return step
        if move_value <= swap_value:
            task, target = int(mine[best_move // machines]), best_move % machines
            loads[busiest] -= cost[task, busiest]
            loads[target] += cost[task, target]
            machine_of_task[task] = target
        else:
            task = int(mine[best_swap // theirs.size])
            other = int(theirs[best_swap % theirs.size])
            target = int(machine_of_task[other])
            loads[busiest] += cost[other, busiest] - cost[task, busiest]
            loads[target] += cost[task, target] - cost[other, target]
            machine_of_task[task] = target
            machine_of_task[other] = busiest
    return max_steps


def price_directed_schedules(
    cost: FloatArray,
    iterations: int,
    keep: int,
    deadline: float | None = None,
    stall: int | None = None,
) -> tuple[list[IntArray], float]:
    """Build schedules from machine prices found by ascent on the LP dual.

    For prices ``p`` on the simplex, sending each task to ``argmin_m p[m] * cost[t, m]`` gives
    the dual value ``sum_t min_m p[m] * cost[t, m]``, a lower bound on the makespan. Prices rise
    multiplicatively on machines loaded above the mean (step ``1 / sqrt(k)``), which drives the
    induced schedules towards balance (the multiplicative-weights method; S. Arora, E. Hazan and
    S. Kale, "The multiplicative weights update method: a meta-algorithm and applications",
    Theory of Computing 8:121-164, 2012).

    Args:
        cost: Shape (n, M), ``inf`` where infeasible; every row has a finite entry.
        iterations: Largest number of price updates.
        keep: How many of the induced schedules with the smallest makespans to return.
        deadline: ``time.perf_counter()`` value after which no further update starts.
        stall: Stop once this many updates in a row induce no schedule seen before: the prices
            have settled into a cycle among known schedules. None never stops early.

    Returns:
        The schedules, best first, and the largest dual value seen (a lower bound).
    """
    n, machines = cost.shape
    tasks = np.arange(n)
    prices = np.full(machines, 1.0 / machines)
    found: dict[bytes, tuple[float, IntArray]] = {}
    seen: set[bytes] = set()
    repeated = 0
    bound = 0.0
    for k in range(iterations):
        if deadline is not None and k and time.perf_counter() > deadline:
            break
        weighted = cost * prices
        choice = weighted.argmin(axis=1)
        chosen = cost[tasks, choice]
        bound = max(bound, float((chosen * prices[choice]).sum()))
        loads = np.bincount(choice, weights=chosen, minlength=machines)
        key = choice.tobytes()
        if key in seen:
            repeated += 1
            if stall is not None and repeated >= stall:
                break
        else:
            seen.add(key)
            repeated = 0
            found[key] = (float(loads.max()), choice)
            if len(found) > 4 * keep:
                worst = max(found, key=lambda item: found[item][0])
                del found[worst]
        mean = float(loads.sum()) / machines
        if mean <= 0:
            break
        prices = prices * np.exp((loads / mean - 1.0) / np.sqrt(k + 1.0))
        # Prices must stay positive so that infinite (infeasible) costs stay infinite.
        prices = np.maximum(prices / prices.sum(), 1e-12)
    ranked = sorted(found.values(), key=lambda item: item[0])
    return [choice.astype(np.int64) for _, choice in ranked[:keep]], bound


class Genetic:
    """Memetic GA seeded with greedy and price-directed schedules; see the module docstring.

    Args:
        population_size: Number of schedules kept (at least 3, for the greedy seeds); an
            instance with fewer tasks keeps one schedule per task, but at least 3.
        tournament_size: Schedules compared when picking a parent.
        mutation_tasks: Tasks moved to a random feasible machine in each offspring.
        kick_tasks: Tasks moved at random in each iterated-local-search kick.
        price_iterations: Most price updates used to build the initial population. A run does
            at most 4 per task and 10 per generation of its budget, and stops once the prices
            only induce schedules already seen.
        default_generations: Generations run when the budget sets neither limit.
        intensification: Fraction of the budget spent on the iterated local search at the end.

    Raises:
        InvalidSpec: An option is out of range.
    """

    name: ClassVar[str] = "genetic"

    def __init__(
        self,
        *,
        population_size: int = 16,
        tournament_size: int = 2,
        mutation_tasks: int = 2,
        kick_tasks: int = 3,
        price_iterations: int = 2000,
        default_generations: int = 200,
        intensification: float = 0.25,
    ) -> None:
        for option, value, low in (
            ("population_size", population_size, 3),
            ("tournament_size", tournament_size, 1),
            ("mutation_tasks", mutation_tasks, 0),
            ("kick_tasks", kick_tasks, 1),
            ("price_iterations", price_iterations, 0),
            ("default_generations", default_generations, 0),
        ):
            if value < low:
                raise InvalidSpec(f"{option} ({value}) must be >= {low}")
        if not 0.0 <= intensification <= 1.0:
            raise InvalidSpec(f"intensification ({intensification}) must be in [0, 1]")
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.mutation_tasks = mutation_tasks
        self.kick_tasks = kick_tasks
        self.price_iterations = price_iterations
        self.default_generations = default_generations
        self.intensification = intensification

    def assign(
        self,
        etc: npt.NDArray[np.float64],
        feasible: npt.NDArray[np.bool_] | None = None,
        budget: Budget = DEFAULT_BUDGET,
    ) -> Assignment:
        """Search for a small-makespan assignment within the budget.

        The run stops after ``budget.generations`` generations or ``budget.time_limit`` seconds,
        whichever comes first (``default_generations`` when neither is set); the last
        ``intensification`` share of either is spent on iterated-local-search kicks, one per
        generation. It stops sooner when the best schedule meets a lower bound (it is optimal)
        or when T x M generations in a row (T tasks, M machines) bring no gain in a phase, which
        only happens on small instances. The greedy seeds are always built, so a time limit
        shorter than they take is exceeded. The result is never worse than the Min-min,
        Sufferage and LPT schedules. With only a generation limit the result depends on nothing
        but the input and ``budget.seed``.

        Raises:
            InvalidSpec: ``etc`` or ``feasible`` is malformed.
        """
        started = time.perf_counter()
        matrix, mask = validate_etc(etc, feasible)
        machine_of_task = np.full(matrix.shape[0], UNASSIGNED, dtype=np.int64)
        placeable = np.flatnonzero(mask.any(axis=1))
        if placeable.size:
            cost = cost_matrix(matrix[placeable], mask[placeable])
            machine_of_task[placeable] = self._evolve(cost, budget, started)
        return make_assignment(self.name, matrix, mask, machine_of_task)

    def _evolve(self, cost: FloatArray, budget: Budget, started: float) -> IntArray:
        rng = np.random.default_rng(budget.seed)
        n, m = cost.shape
        generations = budget.generations
        if generations is None and budget.time_limit is None:
            generations = self.default_generations
        time_limit = budget.time_limit
        generation = 0

        def spent() -> float:
            """Fraction of the budget used so far."""
            used = 0.0
            if generations is not None:
                used = generation / generations if generations else 1.0
            if time_limit is not None:
                elapsed = time.perf_counter() - started
                used = max(used, elapsed / time_limit if time_limit else 1.0)
            return used

        # The price ascent gets about as much work as the generations that follow, and a few
        # updates per task suffice: more only revisit the same schedules.
        price_updates = min(self.price_iterations, _PRICE_UPDATES_PER_TASK * n)
        if generations is not None:
            price_updates = min(price_updates, _PRICE_UPDATES_PER_GENERATION * generations)
        population, bound = self._initial_population(
            cost,
            rng,
            price_updates,
            None if time_limit is None else started + 0.3 * time_limit,
        )
        fitness = np.array([_loads(cost, member).max() for member in population])
        # A schedule that meets a lower bound is optimal, and on a small instance n * m
        # generations in a row without a gain (each ending in a full local search) mean the
        # search has run dry; either ends the run before the budget does.
        bound = max(bound, float(cost.min(axis=1).max()))
        patience = n * m
        best = float(fitness.min())
        stalled = 0
        proven = bound * (1 + _RELATIVE_GAIN)
        while best > proven and stalled < patience and spent() < 1.0 - self.intensification:
            child = self._offspring(cost, population, fitness, rng)
            child_loads = _loads(cost, child)
            local_search(cost, child, child_loads)
            worst = int(fitness.argmax())
            makespan = float(child_loads.max())
            if makespan < fitness[worst] and not (fitness == makespan).any():
                population[worst] = child
                fitness[worst] = makespan
            stalled = 0 if makespan < best else stalled + 1
            best = min(best, makespan)
            generation += 1
        leader = population[int(fitness.argmin())].copy()
        leader_loads = _loads(cost, leader)
        stalled = 0
        while best > proven and stalled < patience and spent() < 1.0:
            self._kick(cost, leader, leader_loads, rng)
            makespan = float(leader_loads.max())
            stalled = 0 if makespan < best else stalled + 1
            best = min(best, makespan)
            generation += 1
        return leader

    def _initial_population(
        self,
        cost: FloatArray,
        rng: np.random.Generator,
        price_updates: int,
        deadline: float | None,
    ) -> tuple[list[IntArray], float]:
        """Return the local optima of the seeds and mutated copies, and the price lower bound.

        Tiny instances get at most one schedule per task (but at least the three greedy seeds).
        """
        size = min(self.population_size, max(3, cost.shape[0]))
        seeds = [policy.solve(cost) for policy in (MinMin(), Sufferage(), Lpt())]
        priced, bound = price_directed_schedules(
            cost, price_updates, size, deadline, stall=_PRICE_STALL
        )
        seeds.extend(priced)
        population: list[IntArray] = []
        for seed in seeds[:size]:
            loads = _loads(cost, seed)
            local_search(cost, seed, loads)
            population.append(seed)
        while len(population) < size:
            copy = population[len(population) % len(seeds)].copy()
            _mutate(cost, copy, rng, max(1, copy.size // 20))
            local_search(cost, copy, _loads(cost, copy))
            population.append(copy)
        return population, bound

    def _offspring(
        self,
        cost: FloatArray,
        population: list[IntArray],
        fitness: FloatArray,
        rng: np.random.Generator,
    ) -> IntArray:
        mother = population[self._tournament(fitness, rng)]
        father = population[self._tournament(fitness, rng)]
        if rng.random() < 0.5:
            child = np.where(rng.random(mother.size) < 0.5, mother, father)
        else:
            cut = int(rng.integers(1, max(2, mother.size)))
            child = np.concatenate([mother[:cut], father[cut:]])
        _mutate(cost, child, rng, self.mutation_tasks)
        return child

    def _tournament(self, fitness: FloatArray, rng: np.random.Generator) -> int:
        entrants = rng.integers(0, fitness.size, size=self.tournament_size)
        return int(entrants[fitness[entrants].argmin()])

    def _kick(
        self, cost: FloatArray, best: IntArray, best_loads: FloatArray, rng: np.random.Generator
    ) -> None:
        """One iterated-local-search step; keeps the result if it is no worse."""
        trial = best.copy()
        _mutate(cost, trial, rng, self.kick_tasks)
        trial_loads = _loads(cost, trial)
        local_search(cost, trial, trial_loads)
        if trial_loads.max() <= best_loads.max():
            best[:] = trial
            best_loads[:] = trial_loads


def _mutate(
    cost: FloatArray, machine_of_task: IntArray, rng: np.random.Generator, count: int
) -> None:
    """Move ``count`` random tasks to random feasible machines, in place."""
    if count == 0 or machine_of_task.size == 0:
        return
    tasks = rng.integers(0, machine_of_task.size, size=count)
    for task in tasks.tolist():
        allowed = np.flatnonzero(np.isfinite(cost[task]))
        machine_of_task[task] = allowed[int(rng.integers(0, allowed.size))]
