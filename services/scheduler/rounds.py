"""Pure state of one synchronous round: which task runs where, and which are done."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RoundState", "TaskRecord", "TaskState"]


class TaskState(enum.Enum):
    """Life of a task within its round."""

    PENDING = "pending"
    """Not placed: no live node could take it yet."""
    ASSIGNED = "assigned"
    DONE = "done"
    DROPPED = "dropped"
    """Given up: the round closed without it (deadline with a quorum, or the drop policy)."""


@dataclass
class TaskRecord:
    """One task of a round; ``attempts`` counts placements."""

    index: int
    state: TaskState = TaskState.PENDING
    node_id: str = ""
    attempts: int = 0
    history: list[str] = field(default_factory=list)


class RoundState:
    """Tasks of one round and their placement. Not thread-safe: the job runner owns it."""

    def __init__(self, round_index: int, num_tasks: int) -> None:
        self.round = round_index
        self.tasks = [TaskRecord(i) for i in range(num_tasks)]

    def assign(self, placement: Mapping[int, str]) -> None:
        """Place tasks (task index -> node id); done tasks are never moved."""
        for index, node_id in placement.items():
            task = self.tasks[index]
            if task.state is TaskState.DONE:
                continue
            task.state = TaskState.ASSIGNED
            task.node_id = node_id
            task.attempts += 1
            task.history.append(node_id)

    def complete(self, index: int, node_id: str) -> bool:
        """Mark a task done if ``node_id`` holds it; returns False for stale or unknown reports."""
        if not 0 <= index < len(self.tasks):
            return False
        task = self.tasks[index]
        if task.state is not TaskState.ASSIGNED or task.node_id != node_id:
            return False
        task.state = TaskState.DONE
        return True

    def release(self, index: int) -> None:
        """Return an assigned task to PENDING (its node failed it)."""
        task = self.tasks[index]
        if task.state is TaskState.ASSIGNED:
            task.state = TaskState.PENDING
            task.node_id = ""

    def release_nodes(self, node_ids: Iterable[str]) -> list[int]:
        """Return the unfinished tasks of lost nodes to PENDING; list their indices."""
        lost = set(node_ids)
        released = []
        for task in self.tasks:
            if task.state is TaskState.ASSIGNED and task.node_id in lost:
                task.state = TaskState.PENDING
                task.node_id = ""
                released.append(task.index)
        return released

    def pending(self) -> list[int]:
        """Indices of tasks waiting for a node."""
        return [t.index for t in self.tasks if t.state is TaskState.PENDING]

    def outstanding(self) -> list[TaskRecord]:
        """Tasks assigned but not done."""
        return [t for t in self.tasks if t.state is TaskState.ASSIGNED]

    def done_count(self) -> int:
        """How many tasks have reported."""
        return sum(1 for t in self.tasks if t.state is TaskState.DONE)

    def drop(self, index: int) -> None:
        """Give up on one unfinished task."""
        task = self.tasks[index]
        if task.state is not TaskState.DONE:
            task.state = TaskState.DROPPED
            task.node_id = ""

    def drop_unfinished(self) -> list[int]:
        """Give up on every task not done (the round closes without them); list them."""
        dropped = [
            t.index for t in self.tasks if t.state not in (TaskState.DONE, TaskState.DROPPED)
        ]
        for index in dropped:
            self.drop(index)
        return dropped

    def records(self) -> list[tuple[int, dict[str, Any]]]:
        """Each task as stored with its closed round.

        Its final state, the node that did it (empty if dropped) and every node it was placed
        on, in order.
        """
        return [
            (t.index, {"state": t.state.value, "node": t.node_id, "placed_on": list(t.history)})
            for t in self.tasks
        ]

    @property
    def done(self) -> bool:
        """Whether every task is done or dropped."""
        return all(t.state in (TaskState.DONE, TaskState.DROPPED) for t in self.tasks)
