"""Pure planning: expected-time matrices from node profiles, and placements from a policy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.scheduler.policies import get_policy
from services.scheduler.policies.base import Budget, StatusCode

__all__ = ["NodeCapacity", "Placement", "build_etc", "place"]


@dataclass(frozen=True)
class NodeCapacity:
    """What planning needs to know about a node.

    Attributes:
        throughput: training samples per second (measured by the node).
        bandwidth: bytes per second (0 = unknown: transfer time is ignored).
        failures: tasks this node lost so far; each one inflates its expected times.
    """

    node_id: str
    throughput: float
    bandwidth: float = 0.0
    failures: int = 0


@dataclass(frozen=True)
class Placement:
    """Task index -> node id, and the reasons for any task left unplaced."""

    nodes_of_tasks: Mapping[int, str]
    unplaced_reasons: tuple[str, ...] = ()


# Each lost task makes a node look this much slower, so flaky volunteers get less critical work.
FAILURE_PENALTY = 0.25


def build_etc(
    samples_per_task: Sequence[int], transfer_bytes: int, nodes: Sequence[NodeCapacity]
) -> npt.NDArray[np.float64]:
    """Expected seconds for task t on node n: compute + transfer, inflated by failure history."""
    samples = np.asarray(samples_per_task, dtype=np.float64)[:, None]
    throughput = np.array([max(n.throughput, 1e-9) for n in nodes])[None, :]
    bandwidth = np.array([n.bandwidth for n in nodes])
    transfer = np.where(bandwidth > 0, transfer_bytes / np.maximum(bandwidth, 1e-9), 0.0)[None, :]
    inflation = 1.0 + FAILURE_PENALTY * np.array([n.failures for n in nodes])[None, :]
    etc: npt.NDArray[np.float64] = (samples / throughput + transfer) * inflation
    return etc


def place(
    policy: str,
    task_indices: Sequence[int],
    samples_per_task: Sequence[int],
    transfer_bytes: int,
    nodes: Sequence[NodeCapacity],
    *,
    seed: int = 0,
    time_limit: float = 0.5,
) -> Placement:
    """Assign ``task_indices`` to ``nodes`` with the named policy."""
    if not task_indices or not nodes:
        return Placement({}, ())
    etc = build_etc(samples_per_task, transfer_bytes, nodes)
    budget = Budget(time_limit=time_limit, seed=seed)
    assignment = get_policy(policy).assign(etc, None, budget)
    placed = {
        task: nodes[int(machine)].node_id
        for task, machine in zip(task_indices, assignment.machine_of_task, strict=True)
        if machine >= 0
    }
    reasons = assignment.status.reasons if assignment.status.code is not StatusCode.SUCCESS else ()
    return Placement(placed, tuple(reasons))
