"""``create_server``: the one place where Tessera's gRPC servers are configured.

Every server gets the same options, the standard health service, server reflection (so
grpcurl works without proto files), and one interceptor that turns domain errors into status
codes and counts every RPC for Prometheus. Servicers therefore never call ``context.abort``:
they raise ``TesseraError`` subclasses and the interceptor answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram

from tessera.common.errors import InvalidSpec, TesseraError
from tessera.common.status import code_for

__all__ = [
    "MAX_MESSAGE_BYTES",
    "ServiceBinding",
    "create_server",
    "rewrap_handler",
    "stop_server",
]

log = logging.getLogger(__name__)

# Tensor payloads travel as ~1 MiB chunks, so no single message needs to be large; a firm cap
# keeps a hostile peer from making a server allocate arbitrary buffers.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor

RPCS = Counter("tessera_rpcs_total", "RPCs served, by method and status code", ["method", "code"])
RPC_SECONDS = Histogram(
    "tessera_rpc_seconds",
    "RPC latency (whole stream for streaming RPCs)",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and the generated function that adds it to a server.

    Attributes:
        name: the fully qualified service name from the descriptor, e.g. ``tessera.v1.Registry``.
        add: the generated ``add_<Service>Servicer_to_server`` function.
        servicer: the implementation.
    """

    name: str
    add: Callable[[Any, grpc.Server], None]
    servicer: object


def _server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Workers sit behind NATs that drop idle flows; they ping, so the server must allow it.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        # Detect dead long-lived streams (task streams, watches) within about half a minute.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Tests restart servers on the same port; never share a port with a live server.
        ("grpc.so_reuseport", 0),
    ]


def create_server(
    services: Sequence[ServiceBinding],
    *,
    address: str = "127.0.0.1:0",
    max_workers: int = 32,
    max_concurrent_rpcs: int | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    interceptors: Sequence[_ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Build, bind and start a server.

    Args:
        services: the business services to serve.
        address: ``host:port``; port 0 picks a free port.
        max_workers: handler threads. A sync server holds one thread per open stream, so this
            bounds open task streams and watches together.
        max_concurrent_rpcs: beyond this, new RPCs get RESOURCE_EXHAUSTED (None = unbounded).
        max_message_bytes: receive and send limit per message.
        interceptors: more interceptors (authentication), inside the error mapping so that
            their domain errors become status codes too.
        credentials: TLS credentials; None serves plaintext (loopback and tests).

    Returns:
        The started server, the bound port and its health servicer (all services SERVING).

    Raises:
        RuntimeError: the address could not be bound.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[_ErrorAndMetricsInterceptor(), *interceptors],
        options=_server_options(max_message_bytes),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for binding in services:
        binding.add(binding.servicer, server)
    names = [b.name for b in services]
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    server.start()
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def stop_server(server: grpc.Server, health_servicer: health.HealthServicer, grace: float) -> None:
    """Report NOT_SERVING everywhere, then stop, letting in-flight RPCs finish within ``grace``."""
    health_servicer.enter_graceful_shutdown()
    server.stop(grace).wait()


Behavior = Callable[..., Any]


def rewrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap_unary_response: Callable[[Behavior], Behavior],
    wrap_stream_response: Callable[[Behavior], Behavior],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same handler with its behavior wrapped (by response kind), for interceptors."""
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, wrap_unary_response),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, wrap_unary_response),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, wrap_stream_response),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, wrap_stream_response),
    )
    deserializer = request_deserializer or handler.request_deserializer
    for behavior, make, wrap in kinds:
        if behavior is not None:
            return make(wrap(behavior), deserializer, handler.response_serializer)
    return handler


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request gRPC could not parse, so the handler can answer for it."""

    error: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # gRPC parses requests before any interceptor runs and answers a parse error with INTERNAL;
    # parsing here instead lets the handler answer INVALID_ARGUMENT.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's fault
            return _Undecodable(f"{type(exc).__name__}: {exc}"[:200])

    return parse


def _decoded(request: Any) -> Any:
    """The request, or ``InvalidSpec`` if it could not be parsed (request streams: lazily)."""
    if isinstance(request, _Undecodable):
        raise InvalidSpec(f"the request is not a valid message ({request.error})")
    if hasattr(request, "__next__"):
        return (_decoded(item) for item in request)
    return request


class _ErrorAndMetricsInterceptor(_ServerInterceptor):
    """Maps ``TesseraError`` to status codes, hides unexpected errors, counts RPCs."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        return rewrap_handler(
            handler,
            lambda b: _wrap_unary(b, method),
            lambda b: _wrap_stream(b, method),
            _tolerant(handler.request_deserializer),
        )


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> None:
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= 0
    if expired or not context.is_active():
        # The client went away (or its deadline passed, which can also look like a stream that
        # simply ended): whatever broke, nobody is listening, so nothing is logged.
        code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        RPCS.labels(method, code.name).inc()
        context.abort(code, "the call ended before the server answered")
    if isinstance(exc, TesseraError):
        code = code_for(exc)
        message = str(exc)
    else:
        log.exception("unexpected error in %s", method)
        code = grpc.StatusCode.INTERNAL
        message = "internal error; the service log has the details"
    RPCS.labels(method, code.name).inc()
    context.abort(code, message)


def _wrap_unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            response = behavior(_decoded(request), context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a trace
            _abort(context, method, exc)
            return None
        finally:
            RPC_SECONDS.labels(method).observe(time.perf_counter() - started)
        RPCS.labels(method, grpc.StatusCode.OK.name).inc()
        return response

    return wrapped


def _wrap_stream(behavior: Callable[..., Iterator[Any]], method: str) -> Callable[..., Any]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            yield from behavior(_decoded(request), context)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status, never a trace
            _abort(context, method, exc)
            return
        finally:
            RPC_SECONDS.labels(method).observe(time.perf_counter() - started)
        RPCS.labels(method, grpc.StatusCode.OK.name).inc()

    return wrapped
