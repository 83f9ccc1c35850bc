"""Leader election among scheduler replicas on etcd, with fencing.

The leader holds a lease-bound key; its *term* is the key's create revision, which no later
holder can share. Every write a leader makes is a transaction that first compares the key's
create revision with its term, so a leader that lost its lease (paused, partitioned) cannot
write any more, even before it notices: the write fails with ``NotLeader``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tessera.common.errors import NotLeader, StoreUnavailable
from tessera.common.etcd import translate_errors
from tessera.common.retry import Backoff

__all__ = ["LeaderElection"]

log = logging.getLogger(__name__)


class LeaderElection:
    """Campaign for, hold and lose leadership of the key ``key``.

    ``on_elected(term)`` and ``on_lost()`` are called from the election thread. Liveness is
    ``ttl`` seconds: the lease is refreshed every ``ttl / 3`` seconds, and a leader that cannot
    refresh it steps down before it would expire.
    """

    def __init__(
        self,
        client: Any,
        key: str,
        candidate: str,
        *,
        ttl: int = 5,
        on_elected: Callable[[int], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._client = client
        self._key = key
        self._candidate = candidate
        self._ttl = ttl
        self._on_elected = on_elected
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._term = 0
        self._lease: Any = None
        self._thread = threading.Thread(target=self._run, name="election", daemon=True)

    @property
    def term(self) -> int:
        """The fencing token while leading, else 0."""
        with self._lock:
            return self._term

    def fence(self) -> list[Any]:
        """Compares that make a transaction succeed only while this replica leads.

        Raises:
            NotLeader: not leading now.
        """
        term = self.term
        if not term:
            raise NotLeader("this scheduler is not the leader")
        return [self._client.transactions.create(self._key) == term]

    def start(self) -> None:
        """Start campaigning in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Resign (revoke the lease) and stop campaigning."""
        self._stop.set()
        self._thread.join(timeout=10)
        lease = self._lease
        if lease is not None:
            try:
                with translate_errors("resignation"):
                    self._client.revoke_lease(lease.id)
            except StoreUnavailable:
                pass  # it expires on its own

    def _run(self) -> None:
        backoff = Backoff(initial=0.1, maximum=2.0)
        while not self._stop.is_set():
            try:
                term = self._campaign()
            except StoreUnavailable as exc:
                log.warning("election: %s", exc)
                if backoff.wait(self._stop):
                    return
                continue
            if term is None:
                continue
            backoff.reset()
            with self._lock:
                self._term = term
            log.info("elected leader (term %d)", term)
            self._on_elected(term)
            self._hold()
            with self._lock:
                self._term = 0
            self._lease = None
            if not self._stop.is_set():
                log.warning("lost leadership (term %d)", term)
                self._on_lost()
                # Let a standby take over rather than flapping back at once.
                self._stop.wait(self._ttl)

    def _campaign(self) -> int | None:
        """Try once to take the key; wait for it to be free if taken. The term, or None."""
        with translate_errors("election"):
            lease = self._client.lease(self._ttl)
            txn = self._client.transactions
            won, _ = self._client.transaction(
                compare=[txn.create(self._key) == 0],
                success=[txn.put(self._key, self._candidate, lease)],
                failure=[],
            )
            if won:
                _value, meta = self._client.get(self._key)
                if meta is not None and meta.lease_id == lease.id:
                    self._lease = lease
                    return int(meta.create_revision)
            self._client.revoke_lease(lease.id)
        self._wait_for_change()
        return None

    def _wait_for_change(self) -> None:
        """Wait until the key changes, or ``ttl`` seconds, or stop (then look again)."""
        changed = threading.Event()
        with translate_errors("election watch"):
            watch_id = self._client.add_watch_callback(self._key, lambda _response: changed.set())
        try:
            deadline = time.monotonic() + self._ttl
            while not (changed.is_set() or self._stop.is_set()):
                if not changed.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
                    if time.monotonic() >= deadline:
                        break
        finally:
            try:
                self._client.cancel_watch(watch_id)
            except Exception as exc:  # noqa: BLE001 - the watch dies with its stream anyway
                log.debug("election watch cancel failed: %s", exc)

    def _hold(self) -> None:
        """Refresh the lease until it cannot be refreshed in time or we stop."""
        lease = self._lease
        interval = self._ttl / 3
        deadline_margin = self._ttl - interval
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            try:
                with translate_errors("leader keep-alive"):
                    ttl = max((int(r.TTL) for r in self._client.refresh_lease(lease.id)), default=0)
                if ttl <= 0:
                    return
                last_ok = time.monotonic()
            except StoreUnavailable as exc:
                log.warning("leader keep-alive failed: %s", exc)
                if time.monotonic() - last_ok >= deadline_margin:
                    return
