"""Per-node outboxes of tasks, drained by each node's worker-initiated task stream."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator

from tessera.v1 import scheduler_pb2

__all__ = ["Dispatcher", "task_key"]

TaskKey = tuple[str, int, int]


def task_key(task: scheduler_pb2.Task) -> TaskKey:
    """(job, round, task index)."""
    return (task.job_id, task.round, task.task_index)


class Dispatcher:
    """Delivers tasks to nodes; undelivered and unacknowledged tasks survive a reconnect.

    A task is *pending* until a stream yields it, then *in flight* until ``acknowledge`` (its
    report arrived) or ``retract`` (it was moved elsewhere). When a node opens a new stream, its
    in-flight tasks are delivered again: the node may have lost them with the old connection,
    and the aggregator's exactly-once ledger makes a repeat harmless.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[str, deque[scheduler_pb2.Task]] = {}
        self._inflight: dict[str, dict[TaskKey, scheduler_pb2.Task]] = {}
        self._generation: dict[str, int] = {}

    def send(self, node_id: str, task: scheduler_pb2.Task) -> None:
        """Queue a task for a node."""
        with self._cond:
            self._pending.setdefault(node_id, deque()).append(task)
            self._cond.notify_all()

    def retract(self, node_id: str, key: TaskKey) -> None:
        """Withdraw a task from a node, delivered or not."""
        with self._cond:
            queue = self._pending.get(node_id)
            if queue:
                self._pending[node_id] = deque(t for t in queue if task_key(t) != key)
            self._inflight.get(node_id, {}).pop(key, None)

    def acknowledge(self, node_id: str, key: TaskKey) -> None:
        """The node reported the task: stop tracking it."""
        with self._cond:
            self._inflight.get(node_id, {}).pop(key, None)

    def forget(self, node_id: str) -> None:
        """Drop everything queued for a node that is gone and end its stream."""
        with self._cond:
            self._pending.pop(node_id, None)
            self._inflight.pop(node_id, None)
            self._generation[node_id] = self._generation.get(node_id, 0) + 1
            self._cond.notify_all()

    def nodes(self) -> list[str]:
        """Nodes with queued or in-flight tasks, or an open stream."""
        with self._cond:
            return sorted(set(self._pending) | set(self._inflight) | set(self._generation))

    def wake(self) -> None:
        """Let blocked streams re-check whether they should end."""
        with self._cond:
            self._cond.notify_all()

    def stream(self, node_id: str, stop: threading.Event) -> Iterator[scheduler_pb2.Task]:
        """Yield the node's tasks until ``stop`` is set or a newer stream for the node opens."""
        with self._cond:
            generation = self._generation.get(node_id, 0) + 1
            self._generation[node_id] = generation
            redeliver = list(self._inflight.pop(node_id, {}).values())
            queue = self._pending.setdefault(node_id, deque())
            queue.extendleft(reversed(redeliver))
            self._cond.notify_all()
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        stop.is_set()
                        or self._generation.get(node_id) != generation
                        or bool(self._pending.get(node_id))
                    )
                )
                if stop.is_set() or self._generation.get(node_id) != generation:
                    return
                task = self._pending[node_id].popleft()
                self._inflight.setdefault(node_id, {})[task_key(task)] = task
            yield task
