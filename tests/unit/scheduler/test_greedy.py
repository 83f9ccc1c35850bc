"""Greedy policies: known answers, the Braun Min-min column, textbook equality, ties and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from services.scheduler.etc import Consistency, generate_etc, makespan, read_etc
from services.scheduler.policies.base import StatusCode
from services.scheduler.policies.greedy import (
    GreedyPolicy,
    Lpt,
    MaxMin,
    MinMin,
    RoundRobin,
    Sufferage,
)
from tessera.common.errors import InvalidSpec

BRAUN_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "braun"
BRAUN_MIN_MIN = {
    "u_c_hihi.0": 8460675.003,
    "u_c_hilo.0": 161805.434,
    "u_c_lohi.0": 275837.356,
    "u_c_lolo.0": 5441.428,
    "u_i_hihi.0": 3513919.281,
    "u_i_hilo.0": 80755.679,
    "u_i_lohi.0": 120517.709,
    "u_i_lolo.0": 2785.645,
    "u_s_hihi.0": 5160342.819,
    "u_s_hilo.0": 104375.164,
    "u_s_lohi.0": 140284.489,
    "u_s_lolo.0": 3806.828,
}
POLICIES: list[GreedyPolicy] = [MinMin(), MaxMin(), Sufferage(), Lpt(), RoundRobin()]
FloatArray = npt.NDArray[np.float64]

# Consistent 3 x 2 example; the expected schedules are worked out by hand in the docstrings of
# the test below.
SMALL = np.array([[2.0, 3.0], [3.0, 4.0], [6.0, 7.0]])


@pytest.mark.parametrize(
    ("policy", "expected", "expected_makespan"),
    [
        # t0 (2 on m0) first; then t1 finishes at 4 on m1; t2 at 8 on m0.
        (MinMin(), [0, 1, 0], 8.0),
        # t2 (best 6) first on m0; then t1 (best 4 on m1), then t0 (7 on m1 beats 8 on m0).
        (MaxMin(), [1, 1, 0], 7.0),
        # All three suffer 1 on m0: t0 wins; then t1 and t2 both prefer m1 and tie: t1 wins.
        (Sufferage(), [0, 1, 0], 8.0),
        # Largest first: t2 -> m0 (6), t1 -> m1 (4), t0 -> m1 (7 < 8).
        (Lpt(), [1, 1, 0], 7.0),
        (RoundRobin(), [0, 1, 0], 8.0),
    ],
    ids=lambda value: getattr(value, "name", None),
)
def test_known_answers(policy: GreedyPolicy, expected: list[int], expected_makespan: float) -> None:
    # Execute
    result = policy.assign(SMALL)

    # Assert
    assert result.machine_of_task.tolist() == expected
    assert result.makespan == expected_makespan
    assert result.status.code is StatusCode.SUCCESS
    assert result.status.plugin == policy.name


def test_min_min_breaks_ties_by_lowest_task_then_lowest_machine() -> None:
    # Both tasks finish at 1 on either machine: t0 goes first, to machine 0; t1 then to 1.
    etc = np.array([[1.0, 1.0], [1.0, 1.0]])
    assert MinMin().assign(etc).machine_of_task.tolist() == [0, 1]


@pytest.mark.skipif(
    not BRAUN_DIR.is_dir(), reason=f"Braun et al. instances not found in {BRAUN_DIR}"
)
@pytest.mark.parametrize("instance", sorted(BRAUN_MIN_MIN))
def test_min_min_reproduces_the_braun_column(instance: str) -> None:
    etc = read_etc(BRAUN_DIR / instance, 512, 16)
    result = MinMin().assign(etc)
    assert result.makespan == pytest.approx(BRAUN_MIN_MIN[instance], rel=1e-4)
    assert result.makespan == pytest.approx(makespan(etc, result.machine_of_task), rel=1e-12)


def naive_min_min(cost: FloatArray, largest_first: bool) -> list[int]:
    """Ibarra-Kim by the book: rescan every unassigned task and machine at every step."""
    n, m = cost.shape
    ready = np.zeros(m)
    result = [-1] * n
    left = list(range(n))
    for _ in range(n):
        times = cost[left] + ready
        best = times.min(axis=1)
        pick = best.max() if largest_first else best.min()
        row = int(np.flatnonzero(best == pick)[0])
        task = left[row]
        machine = int(np.flatnonzero(times[row] == best[row])[0])
        result[task] = machine
        ready[machine] += cost[task, machine]
        left.remove(task)
    return result


def naive_sufferage(cost: FloatArray) -> list[int]:
    """Maheswaran et al.'s pass loop, task by task."""
    n, m = cost.shape
    ready = np.zeros(m)
    result = [-1] * n
    left = list(range(n))
    while left:
        claimed: dict[int, tuple[int, float]] = {}
        for task in left:
            times = cost[task] + ready
            machine = int(times.argmin())
            rest = np.delete(times, machine)
            suffer = float(rest.min() - times[machine]) if rest.size else np.inf
            if machine not in claimed or claimed[machine][1] < suffer:
                claimed[machine] = (task, suffer)
        for machine, (task, _) in claimed.items():
            result[task] = machine
            ready[machine] += cost[task, machine]
            left.remove(task)
    return result


@pytest.mark.parametrize("seed", range(12))
def test_fast_policies_match_textbook_versions(seed: int) -> None:
    # Small integers make ties common, so the tie rules are exercised too.
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 40)), int(rng.integers(1, 7))
    cost = rng.integers(1, 6, size=(n, m)).astype(np.float64)
    if seed % 2:
        cost *= rng.uniform(1, 50, size=(1, m))
    if seed % 3 == 0:
        hidden = rng.random((n, m)) < 0.4
        hidden[np.arange(n), rng.integers(0, m, size=n)] = False
        cost[hidden] = np.inf
    assert MinMin().solve(cost).tolist() == naive_min_min(cost, largest_first=False)
    assert MaxMin().solve(cost).tolist() == naive_min_min(cost, largest_first=True)
    assert Sufferage().solve(cost).tolist() == naive_sufferage(cost)


def random_costs(kind: str, seed: int) -> FloatArray:
    """A small random cost matrix; odd seeds give ties and zeros, every third one masks pairs."""
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 60)), int(rng.integers(1, 10))
    if seed % 2:
        cost = rng.integers(0, 5, size=(n, m)).astype(np.float64)
    else:
        cost = rng.uniform(1, 100, size=(n, m)) * rng.uniform(1, 30, size=(n, 1))
    if kind == "consistent":
        cost.sort(axis=1)
    elif kind == "semi-consistent":
        cost[:, 0::2] = np.sort(cost[:, 0::2], axis=1)
    if seed % 3 == 0:
        if kind == "consistent":
            # Infeasible slowest machines keep every row sorted.
            cut = rng.integers(1, m + 1, size=n)
            cost[np.arange(m) >= cut[:, None]] = np.inf
        else:
            hidden = rng.random((n, m)) < 0.4
            hidden[np.arange(n), rng.integers(0, m, size=n)] = False
            cost[hidden] = np.inf
    return cost


@pytest.mark.parametrize("kind", ["consistent", "semi-consistent", "inconsistent"])
@pytest.mark.parametrize("seed", range(20))
def test_max_min_and_sufferage_match_textbook_versions(kind: str, seed: int) -> None:
    cost = random_costs(kind, seed)
    assert MaxMin().solve(cost).tolist() == naive_min_min(cost, largest_first=True)
    assert Sufferage().solve(cost).tolist() == naive_sufferage(cost)


@pytest.mark.parametrize(
    ("consistency", "ties"),
    [
        ("consistent", False),
        ("consistent", True),
        ("semi-consistent", False),
        ("inconsistent", False),
    ],
)
def test_max_min_and_sufferage_match_textbook_on_generated_matrices(
    consistency: Consistency, ties: bool
) -> None:
    # Large enough that one placement leaves more tasks to re-rank than Max-min rescans at
    # once, and that Sufferage's passes run through every machine turning busy.
    etc = generate_etc(
        300,
        30,
        consistency=consistency,
        task_heterogeneity="high",
        machine_heterogeneity="high",
        seed=3,
    )
    if ties:
        etc = np.sort(np.round(etc / 20000) * 20000 + 1, axis=1)
    assert MaxMin().solve(etc).tolist() == naive_min_min(etc, largest_first=True)
    assert Sufferage().solve(etc).tolist() == naive_sufferage(etc)


def test_min_min_matches_textbook_on_a_larger_consistent_matrix() -> None:
    rng = np.random.default_rng(7)
    cost = np.sort(rng.uniform(1, 100, size=(150, 40)) * rng.uniform(1, 30, (150, 1)), axis=1)
    assert MinMin().solve(cost).tolist() == naive_min_min(cost, largest_first=False)
    assert MaxMin().solve(cost).tolist() == naive_min_min(cost, largest_first=True)
    assert Sufferage().solve(cost).tolist() == naive_sufferage(cost)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda policy: policy.name)
def test_every_policy_respects_the_mask_and_reports_unplaceable_tasks(
    policy: GreedyPolicy,
) -> None:
    # Prepare
    rng = np.random.default_rng(11)
    etc = rng.uniform(1, 10, size=(30, 5))
    feasible = rng.random((30, 5)) < 0.5
    feasible[np.arange(30), rng.integers(0, 5, size=30)] = True
    feasible[3] = False
    feasible[17] = False
    feasible[[0, 1, 2], :] = [True, False, False, False, False]

    # Execute
    result = policy.assign(etc, feasible)

    # Assert
    machines = result.machine_of_task
    assert machines[3] == -1 and machines[17] == -1
    placed = np.flatnonzero(machines >= 0)
    assert placed.size == 28
    assert feasible[placed, machines[placed]].all()
    assert result.status.code is StatusCode.UNSCHEDULABLE
    assert result.status.reasons == ("task 3 fits no node", "task 17 fits no node")
    assert result.makespan == pytest.approx(makespan(etc, machines))


@pytest.mark.parametrize("policy", POLICIES, ids=lambda policy: policy.name)
def test_degenerate_shapes(policy: GreedyPolicy) -> None:
    empty = policy.assign(np.zeros((0, 3)))
    assert empty.machine_of_task.shape == (0,)
    assert empty.makespan == 0.0
    assert empty.status.code is StatusCode.SUCCESS

    single = policy.assign(np.array([[2.0], [3.0]]))
    assert single.machine_of_task.tolist() == [0, 0]
    assert single.makespan == 5.0

    nowhere = policy.assign(np.zeros((2, 0)))
    assert nowhere.machine_of_task.tolist() == [-1, -1]
    assert nowhere.status.code is StatusCode.UNSCHEDULABLE


def test_round_robin_takes_the_next_feasible_machine() -> None:
    feasible = np.array(
        [[True, True, True], [True, False, True], [True, True, False], [True, True, True]]
    )
    result = RoundRobin().assign(np.ones((4, 3)), feasible)
    assert result.machine_of_task.tolist() == [0, 2, 0, 1]


def test_assignment_is_read_only() -> None:
    result = MinMin().assign(SMALL)
    with pytest.raises(ValueError):
        result.machine_of_task[0] = 1


@pytest.mark.parametrize(
    ("etc", "feasible", "message"),
    [
        (np.ones(3), None, r"2-D .* got shape \(3,\)"),
        (np.array([[1.0, np.nan]]), None, r"etc\[0, 1\] is nan"),
        (np.array([[1.0], [-2.0]]), None, r"etc\[1, 0\] is -2.0; expected times must be >= 0"),
        (np.ones((2, 2)), np.ones((2, 3), dtype=bool), r"feasible has shape \(2, 3\)"),
        (np.ones((2, 2)), np.ones((2, 2)), "boolean mask"),
        ([["a"]], None, "numeric"),
    ],
)
def test_malformed_input_is_rejected(etc: object, feasible: object, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        MinMin().assign(etc, feasible)  # type: ignore[arg-type]
