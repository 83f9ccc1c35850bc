"""Client-side helpers: status codes back to domain errors, and retries of transient failures."""

from __future__ import annotations

import threading
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
) -> T:
    """Call ``fn``, retrying UNAVAILABLE-like failures with backoff; translate errors.

    Raises:
        TesseraError: the translated final error (``Unavailable`` if stopped while retrying).
    """
    backoff = backoff or Backoff(initial=0.05, maximum=2.0)
    stop = stop or threading.Event()
    for attempt in range(attempts):
        try:
            return fn()
        except grpc.RpcError as exc:
            final = exc.code() not in RETRYABLE_CODES or attempt == attempts - 1
            if final or backoff.wait(stop):
                with translate_rpc_errors():
                    raise
    raise Unavailable(f"gave up after {attempts} attempts")
