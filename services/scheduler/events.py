"""Per-job progress events that WatchJob streams follow."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator

from tessera.v1 import scheduler_pb2

__all__ = ["EventLog"]


class EventLog:
    """An append-only list of a job's events; followers block until there is more."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[scheduler_pb2.JobEvent] = []
        self._closed = False

    def publish(self, event: scheduler_pb2.JobEvent, *, final: bool = False) -> None:
        """Append an event; ``final`` closes the log after it."""
        with self._cond:
            self._events.append(event)
            self._closed = self._closed or final
            self._cond.notify_all()

    def wake(self) -> None:
        """Let followers re-check their stop condition."""
        with self._cond:
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether the final event was published."""
        with self._cond:
            return self._closed

    def _has_news(self, stop: threading.Event, index: int) -> bool:
        return stop.is_set() or self._closed or len(self._events) > index

    def follow(
        self, stop: threading.Event, start: int | None = None
    ) -> Iterator[scheduler_pb2.JobEvent]:
        """Events from index ``start`` until closed or stopped.

        ``start`` defaults to the log's length *now*, at the call rather than at the first
        ``next``, so a watcher that sends a snapshot and then follows misses nothing between.
        """
        with self._cond:
            index = len(self._events) if start is None else start
        return self._follow(stop, index)

    def _follow(self, stop: threading.Event, index: int) -> Iterator[scheduler_pb2.JobEvent]:
        while True:
            with self._cond:
                self._cond.wait_for(functools.partial(self._has_news, stop, index))
                if stop.is_set():
                    return
                batch = self._events[index:]
                index += len(batch)
                done = self._closed and index >= len(self._events)
            yield from batch
            if done:
                return
