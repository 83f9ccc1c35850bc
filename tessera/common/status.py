"""The single mapping between domain errors and gRPC status codes."""

from __future__ import annotations

import grpc

from tessera.common import errors

__all__ = ["ERROR_TO_CODE", "code_for", "error_for"]

# Most specific first: lookups walk this in order.
ERROR_TO_CODE: tuple[tuple[type[errors.TesseraError], grpc.StatusCode], ...] = (
    (errors.InvalidSpec, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unschedulable, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.StoreCorrupt, grpc.StatusCode.DATA_LOSS),
)


def code_for(error: errors.TesseraError) -> grpc.StatusCode:
    """Return the status code a domain error is reported with (INTERNAL if unmapped)."""
    for cls, code in ERROR_TO_CODE:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode, message: str) -> errors.TesseraError:
    """Return the domain error a client raises for a status code."""
    for cls, mapped in ERROR_TO_CODE:
        if mapped == code and cls is not errors.Unschedulable:
            return cls(message)
    return errors.TesseraError(f"{code.name}: {message}")
