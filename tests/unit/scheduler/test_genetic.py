"""The memetic GA: never worse than its seeds, deterministic, feasible and good on Braun."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from services.scheduler.etc import generate_etc, lp_lower_bound, machine_loads, read_etc
from services.scheduler.policies.base import Budget, StatusCode
from services.scheduler.policies.genetic import Genetic, local_search, price_directed_schedules
from services.scheduler.policies.greedy import Lpt, MinMin, Sufferage
from tessera.common.errors import InvalidSpec

BRAUN_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "braun"
SMALL_GA = {"population_size": 6, "price_iterations": 200}


def instance(seed: int, tasks: int = 120, machines: int = 8) -> np.ndarray:
    return generate_etc(
        tasks,
        machines,
        consistency="semi-consistent",
        task_heterogeneity="high",
        machine_heterogeneity="high",
        seed=seed,
    )


def test_never_worse_than_its_greedy_seeds() -> None:
    for seed in range(3):
        etc = instance(seed)
        result = Genetic(**SMALL_GA).assign(etc, budget=Budget(generations=5, seed=seed))
        for policy in (MinMin(), Sufferage(), Lpt()):
            assert result.makespan <= policy.assign(etc).makespan
        assert result.makespan == pytest.approx(machine_loads(etc, result.machine_of_task).max())


def test_improves_clearly_on_min_min() -> None:
    etc = instance(4, tasks=200, machines=10)
    result = Genetic(**SMALL_GA).assign(etc, budget=Budget(generations=40))
    assert result.makespan < 0.97 * MinMin().assign(etc).makespan
    assert result.makespan <= 1.05 * lp_lower_bound(etc)


def test_same_seed_and_generations_give_the_same_schedule() -> None:
    etc = instance(5)
    budget = Budget(generations=30, seed=9)
    first = Genetic(**SMALL_GA).assign(etc, budget=budget)
    second = Genetic(**SMALL_GA).assign(etc, budget=budget)
    np.testing.assert_array_equal(first.machine_of_task, second.machine_of_task)
    assert first.makespan == second.makespan


def test_respects_the_mask_and_reports_unplaceable_tasks() -> None:
    # Prepare
    rng = np.random.default_rng(3)
    etc = instance(6, tasks=80, machines=6)
    feasible = rng.random(etc.shape) < 0.4
    feasible[np.arange(80), rng.integers(0, 6, size=80)] = True
    feasible[5] = False

    # Execute
    result = Genetic(**SMALL_GA).assign(etc, feasible, Budget(generations=20))

    # Assert
    machines = result.machine_of_task
    placed = np.flatnonzero(machines >= 0)
    assert machines[5] == -1 and placed.size == 79
    assert feasible[placed, machines[placed]].all()
    assert result.status.code is StatusCode.UNSCHEDULABLE
    assert result.status.reasons == ("task 5 fits no node",)


def test_zero_generations_returns_the_best_seed() -> None:
    etc = instance(7)
    result = Genetic(**SMALL_GA).assign(etc, budget=Budget(generations=0))
    assert result.makespan <= MinMin().assign(etc).makespan


def test_a_zero_time_limit_still_returns_a_full_schedule() -> None:
    etc = instance(8)
    result = Genetic(**SMALL_GA).assign(etc, budget=Budget(time_limit=0.0))
    assert (result.machine_of_task >= 0).all()


def test_local_search_balances_a_lopsided_schedule() -> None:
    # Prepare: four unit tasks all on machine 0 of two identical machines.
    cost = np.ones((4, 2))
    machines = np.zeros(4, dtype=np.int64)
    loads = np.array([4.0, 0.0])

    # Execute
    steps = local_search(cost, machines, loads)

    # Assert
    assert steps == 2
    np.testing.assert_array_equal(loads, [2.0, 2.0])
    np.testing.assert_array_equal(np.bincount(machines, minlength=2), [2, 2])


def test_local_search_swaps_when_no_move_helps() -> None:
    # Moving either task only makes the other machine the busiest; swapping them helps.
    cost = np.array([[3.0, 2.0], [1.0, 1.5]])
    machines = np.array([0, 1], dtype=np.int64)
    loads = np.array([3.0, 1.5])
    local_search(cost, machines, loads)
    assert machines.tolist() == [1, 0]
    np.testing.assert_array_equal(loads, [1.0, 2.0])


def test_price_bound_is_a_lower_bound() -> None:
    etc = instance(9, tasks=60, machines=5)
    schedules, bound = price_directed_schedules(etc, iterations=300, keep=3)
    assert 0 < bound <= lp_lower_bound(etc) * (1 + 1e-9)
    assert 1 <= len(schedules) <= 3
    assert all(schedule.shape == (60,) for schedule in schedules)


def tiny(seed: int) -> np.ndarray:
    return generate_etc(
        8,
        4,
        consistency="inconsistent",
        task_heterogeneity="high",
        machine_heterogeneity="high",
        seed=seed,
    )


def test_price_ascent_stops_once_the_prices_settle() -> None:
    # Without the stall rule a million updates would run into the deadline.
    started = time.perf_counter()
    schedules, bound = price_directed_schedules(
        tiny(0), iterations=1_000_000, keep=3, deadline=started + 3.0, stall=25
    )
    assert time.perf_counter() - started < 1.0
    assert schedules and 0 < bound


def test_small_batches_are_planned_in_milliseconds() -> None:
    # The live scheduler re-plans small rounds with ten generations.
    times = []
    for seed in range(5):
        started = time.perf_counter()
        Genetic().assign(tiny(seed), budget=Budget(generations=10))
        times.append(time.perf_counter() - started)
    assert float(np.median(times)) < 0.025


def test_a_small_batch_does_not_use_up_its_time_limit() -> None:
    etc = tiny(1)
    started = time.perf_counter()
    result = Genetic().assign(etc, budget=Budget(time_limit=5.0))
    assert time.perf_counter() - started < 1.0
    assert result.makespan <= MinMin().assign(etc).makespan


def test_a_schedule_that_meets_the_lower_bound_ends_the_run() -> None:
    # Task 0 takes at least 50 anywhere, and the others fit beside it on the second machine.
    etc = np.array([[50.0, 60.0], [1.0, 2.0], [2.0, 1.0], [1.0, 1.0]])
    started = time.perf_counter()
    result = Genetic().assign(etc, budget=Budget(time_limit=5.0))
    assert time.perf_counter() - started < 1.0
    assert result.makespan == 50.0


@pytest.mark.parametrize(
    "options",
    [{"population_size": 2}, {"kick_tasks": 0}, {"intensification": 1.5}],
)
def test_options_are_validated(options: dict[str, float]) -> None:
    with pytest.raises(InvalidSpec):
        Genetic(**options)  # type: ignore[arg-type]


@pytest.mark.skipif(
    not (BRAUN_DIR / "u_i_hihi.0").is_file(),
    reason=f"Braun et al. instances not found in {BRAUN_DIR}",
)
def test_two_seconds_on_a_braun_instance_is_within_five_percent_of_best_known() -> None:
    etc = read_etc(BRAUN_DIR / "u_i_hihi.0", 512, 16)
    result = Genetic().assign(etc, budget=Budget(time_limit=2.0))
    assert result.makespan <= 1.05 * 2924720.023
