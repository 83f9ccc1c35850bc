"""Credentials on the client side: a channel interceptor that adds them to every call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

__all__ = ["TokenSource", "with_credentials"]

# Gives the bearer token or proof for a full method name; None sends no credentials.
TokenSource = Callable[[str], "str | None"]


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _CredentialsInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def _details(self, details: Any) -> _CallDetails:
        metadata = list(details.metadata or [])
        token = self._source(details.method)
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def with_credentials(channel: grpc.Channel, source: TokenSource | None) -> grpc.Channel:
    """``channel`` with credentials from ``source`` on every call (unchanged if None)."""
    if source is None:
        return channel
    return grpc.intercept_channel(channel, _CredentialsInterceptor(source))
