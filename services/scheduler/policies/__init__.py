"""Scheduling policies: assign a round's tasks to nodes (pure; no gRPC, no etcd).

Modules:
    base: the ``SchedulingPolicy`` protocol, ``Assignment``, ``Budget``, ``Status``.
    greedy: Min-min, Max-min, Sufferage, LPT and round-robin.
    genetic: a memetic genetic algorithm seeded with the greedy results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.scheduler.policies.base import SchedulingPolicy
from services.scheduler.policies.greedy import Lpt, MaxMin, MinMin, RoundRobin, Sufferage
from tessera.common.errors import InvalidSpec

__all__ = ["POLICIES", "get_policy", "register_policy"]

POLICIES: dict[str, Callable[..., SchedulingPolicy]] = {}


def register_policy(name: str, factory: Callable[..., SchedulingPolicy]) -> None:
    """Add a policy under ``name``.

    Raises:
        ValueError: the name is taken.
    """
    if name in POLICIES:
        raise ValueError(f"scheduling policy {name!r} is already registered")
    POLICIES[name] = factory


def get_policy(name: str, **options: Any) -> SchedulingPolicy:
    """Build the policy called ``name`` ('-' and '_' are interchangeable).

    Raises:
        InvalidSpec: no policy has that name.
    """
    factory = POLICIES.get(name.replace("-", "_"))
    if factory is None:
        raise InvalidSpec(
            f"unknown scheduling policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}"
        )
    return factory(**options)


for _policy in (MinMin, MaxMin, Sufferage, Lpt, RoundRobin):
    register_policy(_policy.name, _policy)
