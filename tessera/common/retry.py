"""Exponential backoff with jitter, for background loops and client retries."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import grpc

__all__ = ["RETRYABLE_CODES", "Backoff"]

# Transient by nature: the peer is restarting, overloaded, or the network blinked.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass
class Backoff:
    """Delays of ``initial * factor**n`` seconds, capped at ``maximum``, with full jitter.

    ``wait(stop)`` sleeps for the next delay unless ``stop`` is set first and returns whether
    it was, so loops stop promptly.
    """

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    _attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The next delay, jittered uniformly in [delay / 2, delay]."""
        delay = min(self.maximum, self.initial * self.factor**self._attempt)
        self._attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        """Start again from ``initial`` after a success."""
        self._attempt = 0

    def wait(self, stop: threading.Event) -> bool:
        """Sleep for the next delay; return True if ``stop`` was set."""
        return stop.wait(self.next_delay())
