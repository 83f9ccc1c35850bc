"""Authentication on the server side: an interceptor, and the caller's identity for servicers.

Each service declares which roles may call each of its methods; methods it does not list are
refused (fail closed). The health service and reflection stay open for probes and grpcurl.
Without a cluster key authentication is off (local development), and every caller is anonymous.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from tessera.common.auth import ClusterKey, Identity, RateLimiter, Role
from tessera.common.errors import Unauthenticated
from tessera.common.grpc_server import Behavior, rewrap_handler

__all__ = ["AuthInterceptor", "current_identity", "require_node"]

if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor

_IDENTITY: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "tessera_identity", default=None
)
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def current_identity() -> Identity | None:
    """The authenticated caller of the RPC being served (None with authentication off)."""
    return _IDENTITY.get()


def require_node(node_id: str) -> None:
    """Refuse a node acting for another node.

    Raises:
        Unauthenticated: the caller is a node other than ``node_id``.
    """
    identity = current_identity()
    if identity is not None and identity.role is Role.NODE and identity.subject != node_id:
        raise Unauthenticated(f"node {identity.subject!r} may not act for node {node_id!r}")


class AuthInterceptor(_ServerInterceptor):
    """Checks ``authorization: Bearer <token>`` against the method's allowed roles.

    Args:
        key: the cluster key; None turns authentication off.
        rules: full method name (``/tessera.v1.Registry/Heartbeat``) -> roles allowed.
        limiter: an optional per-caller rate limit (RESOURCE_EXHAUSTED beyond it).
    """

    def __init__(
        self,
        key: ClusterKey | None,
        rules: Mapping[str, frozenset[Role]],
        limiter: RateLimiter | None = None,
    ) -> None:
        self._key = key
        self._rules = dict(rules)
        self._limiter = limiter

    def intercept_service(  # noqa: D102 - grpc.ServerInterceptor API
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        return rewrap_handler(
            handler,
            lambda b: self._wrap_unary(b, method),
            lambda b: self._wrap_stream(b, method),
        )

    def _authenticate(self, method: str, context: grpc.ServicerContext) -> Identity | None:
        if self._key is None:
            return None
        allowed = self._rules.get(method, frozenset())
        token = ""
        for name, value in context.invocation_metadata() or ():
            if name == "authorization" and isinstance(value, str):
                token = value.removeprefix("Bearer ").strip()
        if not token:
            raise Unauthenticated(f"{method} needs credentials (authorization: Bearer <token>)")
        identity = self._key.verify(token, method)
        if identity.role not in allowed:
            roles = ", ".join(sorted(r.value for r in allowed)) or "nobody"
            raise Unauthenticated(
                f"a {identity.role.value} credential may not call {method} (allowed: {roles})"
            )
        if self._limiter is not None:
            self._limiter.take(f"{identity.role.value}:{identity.subject}", time.monotonic())
        return identity

    def _wrap_unary(self, behavior: Behavior, method: str) -> Behavior:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            token = _IDENTITY.set(self._authenticate(method, context))
            try:
                return behavior(request, context)
            finally:
                _IDENTITY.reset(token)

        return wrapped

    def _wrap_stream(self, behavior: Behavior, method: str) -> Behavior:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            identity = self._authenticate(method, context)
            token = _IDENTITY.set(identity)
            try:
                responses = iter(behavior(request, context))
            finally:
                _IDENTITY.reset(token)
            while True:
                # Set per step: a generator's code runs in whatever context resumes it.
                token = _IDENTITY.set(identity)
                try:
                    response = next(responses)
                except StopIteration:
                    return
                finally:
                    _IDENTITY.reset(token)
                yield response

        return wrapped
