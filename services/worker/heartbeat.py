"""``HeartbeatSender``: keeps a node's lease alive from a background thread."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from tessera.common.errors import NotFound, TesseraError
from tessera.common.retry import Backoff

__all__ = ["HeartbeatSender"]

log = logging.getLogger(__name__)


class HeartbeatSender:
    """Calls ``beat()`` every ``interval`` seconds (with jitter) until stopped.

    The registry expires a node ``patience x interval`` seconds after its last heartbeat (the
    etcd lease TTL), so a few failed beats are tolerated: failures back off and retry. When
    ``beat`` raises ``NotFound`` the lease is gone; ``on_lost()`` is called and the loop ends.
    """

    def __init__(
        self,
        beat: Callable[[], None],
        interval: float,
        on_lost: Callable[[], None],
    ) -> None:
        self._beat = beat
        self._interval = interval
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start beating.

        Raises:
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError("heartbeat sender already started")
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        backoff = Backoff(initial=self._interval / 4, maximum=self._interval)
        # Spread the first beats of nodes that start together.
        delay = random.uniform(0, self._interval / 2)
        while not self._stop.wait(delay):
            try:
                self._beat()
                backoff.reset()
                delay = self._interval * random.uniform(0.9, 1.0)
            except NotFound:
                log.warning("registry no longer knows this node; registering again")
                self._on_lost()
                return
            except TesseraError as exc:
                delay = backoff.next_delay()
                log.warning("heartbeat failed (%s); retrying in %.2fs", exc, delay)
