"""Pure planning: expected-time matrices from node profiles, and placements from a policy."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.scheduler.policies import get_policy
from services.scheduler.policies.base import Budget, StatusCode

__all__ = [
    "NodeCapacity",
    "Placement",
    "PlacementCache",
    "ResourceNeeds",
    "ThroughputTracker",
    "build_etc",
    "feasibility",
    "place",
]


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
    memory_bytes: int = 0
    gpu_count: int = 0
    gpu_memory_bytes: int = 0
    local_datasets: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ResourceNeeds:
    """What every task of a job needs from a node (0 = no requirement)."""

    memory_bytes: int = 0
    gpus: int = 0
    gpu_memory_bytes: int = 0
    # A federated job's data set, which only nodes that hold it locally can train on.
    local_dataset: str = ""


def feasibility(
    num_tasks: int, needs: ResourceNeeds, nodes: Sequence[NodeCapacity]
) -> tuple[npt.NDArray[np.bool_], tuple[str, ...]]:
    """The (tasks x nodes) mask of nodes that meet the needs, and why nodes were filtered out.

    The reasons are one line per unmet need, e.g. "no node with >= 8.0 GiB GPU memory", for
    users to read when a task fits nowhere.
    """
    checks: list[tuple[int, str, Callable[[NodeCapacity], bool]]] = [
        (needs.memory_bytes, "memory", lambda n: n.memory_bytes >= needs.memory_bytes),
        (needs.gpus, "GPUs", lambda n: n.gpu_count >= needs.gpus),
        (
            needs.gpu_memory_bytes,
            "GPU memory",
            lambda n: n.gpu_memory_bytes >= needs.gpu_memory_bytes,
        ),
    ]
    ok = np.ones(len(nodes), dtype=np.bool_)
    reasons = []
    if needs.local_dataset:
        ok &= np.array([needs.local_dataset in n.local_datasets for n in nodes], dtype=np.bool_)
        if not ok.any():
            reasons.append(f"no node holds local data set {needs.local_dataset!r}")
    for required, label, test in checks:
        if not required:
            continue
        passing = np.array([test(n) for n in nodes], dtype=np.bool_)
        if not passing.any():
            amount = f"{required / 2**30:.1f} GiB" if label != "GPUs" else str(required)
            reasons.append(f"no node with >= {amount} {label}")
        ok &= passing
    return np.repeat(ok[None, :], num_tasks, axis=0), tuple(reasons)


class ThroughputTracker:
    """Observed training throughput per node: an exponential moving average of reports.

    Profiles are measured once, on a reference model; observed task durations on the job's own
    model correct them from the first report on.
    """

    def __init__(self, smoothing: float = 0.3) -> None:
        self._smoothing = smoothing
        self._observed: dict[str, float] = {}

    def observe(self, node_id: str, samples: int, seconds: float) -> None:
        """Record that ``node_id`` trained ``samples`` samples in ``seconds``."""
        if samples <= 0 or seconds <= 0:
            return
        rate = samples / seconds
        previous = self._observed.get(node_id)
        self._observed[node_id] = (
            rate if previous is None else previous + self._smoothing * (rate - previous)
        )

    def estimate(self, node_id: str, profile_throughput: float) -> float:
        """The observed throughput if any, else the profile's."""
        return self._observed.get(node_id, profile_throughput)

    def forget(self, node_id: str) -> None:
        """Drop a node's history (it left)."""
        self._observed.pop(node_id, None)


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
    needs: ResourceNeeds = ResourceNeeds(),  # noqa: B008 - frozen dataclass, safe default
    seed: int = 0,
    time_limit: float = 0.05,
) -> Placement:
    """Assign ``task_indices`` to ``nodes`` with the named policy.

    Tasks that fit no node stay unplaced; ``unplaced_reasons`` says why.
    """
    if not task_indices:
        return Placement({}, ())
    if not nodes:
        return Placement({}, ("no live node",))
    etc = build_etc(samples_per_task, transfer_bytes, nodes)
    feasible, filtered = feasibility(len(task_indices), needs, nodes)
    if filtered:
        return Placement({}, filtered)
    budget = Budget(time_limit=time_limit, seed=seed)
    assignment = get_policy(policy).assign(etc, feasible, budget)
    placed = {
        task: nodes[int(machine)].node_id
        for task, machine in zip(task_indices, assignment.machine_of_task, strict=True)
        if machine >= 0
    }
    reasons = assignment.status.reasons if assignment.status.code is not StatusCode.SUCCESS else ()
    return Placement(placed, tuple(reasons))


class PlacementCache:
    """Reuses a placement while its inputs stay materially the same.

    Synchronous rounds repeat the same tasks on the same nodes, so re-solving every round
    would spend an anytime policy's whole budget (tens of milliseconds for the genetic one)
    on every round for nothing. A cached placement is reused while every node's throughput
    and bandwidth stay within ``tolerance`` (relative) of the values it was planned with, so
    measurement noise does not force a re-plan but a real change does.
    """

    def __init__(self, *, tolerance: float = 0.15, capacity: int = 64) -> None:
        self._tolerance = tolerance
        self._capacity = capacity
        self._entries: OrderedDict[tuple[object, ...], tuple[npt.NDArray[np.float64], Placement]]
        self._entries = OrderedDict()
        self.hits = 0
        self.misses = 0

    def place(
        self,
        policy: str,
        task_indices: Sequence[int],
        samples_per_task: Sequence[int],
        transfer_bytes: int,
        nodes: Sequence[NodeCapacity],
        *,
        needs: ResourceNeeds = ResourceNeeds(),  # noqa: B008 - frozen dataclass, safe default
        seed: int = 0,
    ) -> Placement:
        """``place(...)``, or the cached placement for equivalent inputs."""
        key = (
            policy,
            tuple(task_indices),
            tuple(samples_per_task),
            transfer_bytes,
            needs,
            tuple(
                (
                    n.node_id,
                    n.failures,
                    n.memory_bytes,
                    n.gpu_count,
                    n.gpu_memory_bytes,
                    n.local_datasets,
                )
                for n in nodes
            ),
        )
        rates = np.array([[n.throughput, n.bandwidth] for n in nodes], dtype=np.float64)
        cached = self._entries.get(key)
        if cached is not None:
            planned_rates, placement = cached
            drift = np.abs(rates - planned_rates) / np.maximum(planned_rates, 1e-12)
            if not drift.size or float(drift.max()) <= self._tolerance:
                self._entries.move_to_end(key)
                self.hits += 1
                return placement
        self.misses += 1
        placement = place(
            policy, task_indices, samples_per_task, transfer_bytes, nodes, needs=needs, seed=seed
        )
        self._entries[key] = (rates, placement)
        self._entries.move_to_end(key)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return placement
