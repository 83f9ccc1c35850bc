"""Exactly-once accounting of contributions, keyed by (job, round, task)."""

from __future__ import annotations

import enum
import threading
from collections import Counter
from dataclasses import dataclass

__all__ = ["Decision", "Ledger", "LedgerEntry"]


class Decision(enum.Enum):
    """What happened to one contribution."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True)
class LedgerEntry:
    """One decision about one contribution."""

    job_id: str
    round: int
    task: int
    node_id: str
    decision: Decision
    reason: str = ""
    kind: str = ""


class Ledger:
    """Every decision, in order; at most one APPLIED per (job, round, task).

    Thread-safe. ``claim`` is the single point where exactly-once is decided.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LedgerEntry] = []
        self._applied: set[tuple[str, int, int]] = set()
        self._applied_per_round: Counter[tuple[str, int]] = Counter()

    def claim(self, job_id: str, round_index: int, task: int, node_id: str) -> bool:
        """Record an APPLIED decision if this key has none yet; else record a DUPLICATE.

        Returns:
            True if the caller must apply the contribution, False for a duplicate.
        """
        key = (job_id, round_index, task)
        with self._lock:
            if key in self._applied:
                self._entries.append(
                    LedgerEntry(job_id, round_index, task, node_id, Decision.DUPLICATE)
                )
                return False
            self._applied.add(key)
            self._applied_per_round[job_id, round_index] += 1
            self._entries.append(LedgerEntry(job_id, round_index, task, node_id, Decision.APPLIED))
            return True

    def note_duplicate(self, job_id: str, round_index: int, task: int, node_id: str) -> bool:
        """If this key is already applied, record a DUPLICATE and return True."""
        with self._lock:
            if (job_id, round_index, task) not in self._applied:
                return False
            self._entries.append(
                LedgerEntry(job_id, round_index, task, node_id, Decision.DUPLICATE)
            )
            return True

    def reject(
        self, job_id: str, round_index: int, task: int, node_id: str, reason: str, kind: str
    ) -> None:
        """Record a rejection, its reason and its kind (a short label for metrics)."""
        with self._lock:
            self._entries.append(
                LedgerEntry(job_id, round_index, task, node_id, Decision.REJECTED, reason, kind)
            )

    def entries(self, job_id: str | None = None) -> list[LedgerEntry]:
        """A copy of the decisions, optionally for one job."""
        with self._lock:
            return [e for e in self._entries if job_id is None or e.job_id == job_id]

    def applied_count(self, job_id: str, round_index: int) -> int:
        """How many distinct tasks of a round have been applied."""
        with self._lock:
            return self._applied_per_round[job_id, round_index]

    def counts(self) -> Counter[str]:
        """Decisions by kind."""
        with self._lock:
            return Counter(e.decision.value for e in self._entries)

    def rejections(self, job_id: str | None = None) -> Counter[str]:
        """Rejections by kind (``stale``, ``non_finite``, ...), optionally for one job."""
        with self._lock:
            return Counter(
                e.kind
                for e in self._entries
                if e.decision is Decision.REJECTED and (job_id is None or e.job_id == job_id)
            )
