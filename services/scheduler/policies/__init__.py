"""Scheduling policies: map a batch of tasks onto nodes, chosen by name.

Modules:
    base: the ``SchedulingPolicy`` protocol, ``Assignment``, ``Budget``, ``Status`` and the
        input checks every policy shares.
    greedy: Min-min, Max-min, Sufferage, LPT and round robin.
    genetic: the memetic genetic algorithm seeded by the greedy policies.

Job specs name a policy as data (``"policy": "min_min"``); :func:`get_policy` turns the name
into an instance. Hyphenated spellings from the command line (``min-min``) are accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.scheduler.policies.base import (
    Assignment,
    Budget,
    SchedulingPolicy,
    Status,
    StatusCode,
    validate_etc,
)
from services.scheduler.policies.genetic import Genetic
from services.scheduler.policies.greedy import Lpt, MaxMin, MinMin, RoundRobin, Sufferage
from tessera.common.errors import InvalidSpec
from tessera.common.factories import check_options

__all__ = [
    "POLICIES",
    "Assignment",
    "Budget",
    "Genetic",
    "Lpt",
    "MaxMin",
    "MinMin",
    "RoundRobin",
    "SchedulingPolicy",
    "Status",
    "StatusCode",
    "Sufferage",
    "get_policy",
    "normalize_policy_name",
    "register_policy",
    "validate_etc",
]

POLICIES: dict[str, Callable[..., SchedulingPolicy]] = {}
"""Factories by policy name; keyword options given to :func:`get_policy` are passed on."""


def normalize_policy_name(name: str) -> str:
    """Return the registry spelling of a policy name: lower case, '-' replaced by '_'."""
    return name.strip().lower().replace("-", "_")


def register_policy(name: str, factory: Callable[..., SchedulingPolicy]) -> None:
    """Add a policy factory under ``name`` (normalised by :func:`normalize_policy_name`).

    Raises:
        ValueError: The name is empty or already registered.
    """
    key = normalize_policy_name(name)
    if not key.isidentifier():
        raise ValueError(f"policy name {name!r} must be a non-empty identifier like 'min_min'")
    if key in POLICIES:
        raise ValueError(f"scheduling policy {key!r} is already registered")
    POLICIES[key] = factory


def get_policy(name: str, **options: Any) -> SchedulingPolicy:
    """Build the policy registered under ``name`` with keyword ``options``.

    Raises:
        InvalidSpec: No policy has that name, or the policy does not take one of the options
            or rejects its value.
    """
    key = normalize_policy_name(name)
    factory = POLICIES.get(key)
    if factory is None:
        raise InvalidSpec(
            f"unknown scheduling policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}"
        )
    try:
        check_options(factory, options)
    except TypeError as exc:
        raise InvalidSpec(f"scheduling policy {key!r}: {exc}") from None
    return factory(**options)


for _policy in (MinMin, MaxMin, Sufferage, Lpt, RoundRobin, Genetic):
    register_policy(_policy.name, _policy)
