"""Client-side helpers: status codes back to domain errors, and retries of transient failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import grpc

from tessera.common.errors import Unavailable
from tessera.common.retry import RETRYABLE_CODES, Backoff
from tessera.common.status import error_for

__all__ = ["call_with_retry", "translate_rpc_errors"]

T = TypeVar("T")


@contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Re-raise ``grpc.RpcError`` as the matching ``TesseraError`` with the server's message."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise error_for(code, details or code.name) from exc


def call_with_retry(
    fn: Callable[[], T],
    *,
    stop: threading.Event | None = None,
    attempts: int = 8,
    backoff: Backoff | None = None,
    patience: float | None = None,
) -> T:
    """Call ``fn``, retrying UNAVAILABLE-like failures with backoff; translate errors.

    Gives up after ``attempts`` calls or, when set, once ``patience`` seconds have passed.

    Raises:
        TesseraError: the translated final error (``Unavailable`` if stopped while retrying).
    """
    backoff = backoff or Backoff(initial=0.05, maximum=2.0)
    stop = stop or threading.Event()
    give_up_at = None if patience is None else time.monotonic() + patience
    for attempt in range(attempts):
        try:
            return fn()
        except grpc.RpcError as exc:
            out_of_time = give_up_at is not None and time.monotonic() >= give_up_at
            final = exc.code() not in RETRYABLE_CODES or attempt == attempts - 1 or out_of_time
            if final or backoff.wait(stop):
                with translate_rpc_errors():
                    raise
    raise Unavailable(f"gave up after {attempts} attempts")
