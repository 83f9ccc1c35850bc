"""Exactly-once accounting of contributions, keyed by (job, round, task).

Memory stays bounded over long jobs: the applied keys of rounds before the last closed one are
dropped (``forget_before``), since a contribution for such a round is refused as stale anyway,
and the decision log keeps the most recent ``max_entries`` decisions. Totals by decision and
reason live in Prometheus (``tessera_contributions_total``).
"""

from __future__ import annotations

import enum
import threading
from collections import Counter, deque
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
    """Recent decisions, in order; at most one APPLIED per (job, round, task).

    Thread-safe. ``claim`` is the single point where exactly-once is decided.
    """

    def __init__(self, max_entries: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[LedgerEntry] = deque(maxlen=max_entries)
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

    def forget_before(self, job_id: str, round_index: int) -> None:
        """Drop the job's applied keys of rounds before ``round_index``."""
        with self._lock:
            old = [key for key in self._applied if key[0] == job_id and key[1] < round_index]
            for key in old:
                self._applied.discard(key)
            for job_round in [k for k in self._applied_per_round if k[0] == job_id]:
                if job_round[1] < round_index:
                    del self._applied_per_round[job_round]

    def entries(self, job_id: str | None = None) -> list[LedgerEntry]:
        """A copy of the recent decisions, optionally for one job."""
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
