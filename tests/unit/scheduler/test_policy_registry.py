"""The policy registry, the shared value types and the offline entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.scheduler.etc import write_etc
from services.scheduler.offline import schedule_file
from services.scheduler.policies import (
    POLICIES,
    Genetic,
    MinMin,
    get_policy,
    register_policy,
)
from services.scheduler.policies.base import Assignment, Budget, Status, StatusCode
from tessera.common.errors import InvalidSpec

NAMES = ["genetic", "lpt", "max_min", "min_min", "round_robin", "sufferage"]


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = dict(POLICIES)
    yield
    POLICIES.clear()
    POLICIES.update(saved)


def test_every_policy_is_registered_under_its_own_name() -> None:
    assert sorted(POLICIES) == NAMES
    for name in NAMES:
        assert get_policy(name).name == name


@pytest.mark.parametrize("spelling", ["min-min", "MIN_MIN", " min_min "])
def test_cli_spellings_are_accepted(spelling: str) -> None:
    assert isinstance(get_policy(spelling), MinMin)


def test_unknown_name_says_how_to_fix_it() -> None:
    with pytest.raises(InvalidSpec) as caught:
        get_policy("xyz")
    assert str(caught.value) == (
        "unknown scheduling policy 'xyz'; choose one of: "
        "genetic, lpt, max_min, min_min, round_robin, sufferage"
    )


def test_options_reach_the_factory() -> None:
    policy = get_policy("genetic", population_size=5)
    assert isinstance(policy, Genetic) and policy.population_size == 5


def test_unknown_option_is_invalid_spec() -> None:
    with pytest.raises(InvalidSpec, match="min_min"):
        get_policy("min_min", population_size=5)


def test_duplicate_names_are_refused(restore_registry: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_policy("min-min", MinMin)


def test_new_policies_can_be_registered(restore_registry: None) -> None:
    register_policy("first_fit", MinMin)
    assert isinstance(get_policy("first-fit"), MinMin)


@pytest.mark.parametrize("name", NAMES)
def test_every_policy_honours_the_protocol(name: str) -> None:
    etc = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    result = get_policy(name).assign(etc, None, Budget(generations=2, seed=1))
    assert isinstance(result, Assignment)
    assert result.status == Status(StatusCode.SUCCESS, plugin=name)
    assert result.machine_of_task.dtype == np.int64


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"time_limit": -1.0}, r"time_limit \(-1.0\) must be"),
        ({"time_limit": float("nan")}, "time_limit"),
        ({"generations": -2}, r"generations \(-2\) must be >= 0"),
        ({"seed": -1}, r"seed \(-1\) must be >= 0"),
    ],
)
def test_budget_is_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        Budget(**fields)


def test_schedule_file(tmp_path: Path) -> None:
    path = tmp_path / "small.etc"
    write_etc(path, np.array([[2.0, 3.0], [3.0, 4.0], [6.0, 7.0]]))
    report = schedule_file(path, 3, 2, "max-min")
    assert report["algorithm"] == "max_min"
    assert report["makespan"] == 7.0
    assert report["assignment"] == [1, 1, 0]
    assert report["seconds"] >= 0


def test_schedule_file_rejects_unknown_algorithms(tmp_path: Path) -> None:
    path = tmp_path / "small.etc"
    write_etc(path, np.ones((2, 2)))
    with pytest.raises(InvalidSpec, match="unknown scheduling policy 'fastest'"):
        schedule_file(path, 2, 2, "fastest")
