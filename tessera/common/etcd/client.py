"""Connecting to etcd and translating client-library errors into domain errors."""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import etcd3
import etcd3.exceptions
import etcd3.watch
import grpc

from tessera.common.errors import InvalidSpec, StoreUnavailable

__all__ = ["connect", "parse_endpoint", "translate_errors"]


def _repair_watch_error_path() -> None:
    # python3-etcd3 0.13 calls ``six.itervalues`` when a watch stream breaks but never imports
    # six, so the callbacks are never told and watchers hang. Supply the one function it uses.
    if not hasattr(etcd3.watch, "six"):
        etcd3.watch.six = types.SimpleNamespace(itervalues=lambda d: iter(d.values()))


_repair_watch_error_path()


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``host:port`` (an optional ``http://`` is ignored).

    Raises:
        InvalidSpec: the endpoint has no valid port.
    """
    hostport = endpoint.removeprefix("http://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidSpec(f"etcd endpoint {endpoint!r} must look like host:port")
    return host, int(port)


def connect(endpoint: str, *, timeout: float = 5.0) -> Any:
    """Return an ``etcd3`` client for ``host:port``.

    The connection is lazy: errors surface on first use, translated by ``translate_errors``.
    """
    host, port = parse_endpoint(endpoint)
    client = etcd3.client(host=host, port=port, timeout=timeout)
    # The library benches an endpoint for five minutes after one failed call, which with a
    # single endpoint means five minutes without etcd after a restart. gRPC's own reconnect
    # backoff already paces retries, so never bench it.
    for each in client.endpoints.values():
        each.time_retry = 0.0
    return client


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Re-raise etcd client errors as ``StoreUnavailable`` naming the operation.

    Raises:
        StoreUnavailable: etcd could not be reached or did not answer in time.
    """
    try:
        yield
    except (
        etcd3.exceptions.ConnectionFailedError,
        etcd3.exceptions.ConnectionTimeoutError,
        etcd3.exceptions.InternalServerError,
    ) as exc:
        raise StoreUnavailable(f"etcd unavailable during {what}: {exc}") from exc
    except etcd3.exceptions.NoServerAvailableError as exc:
        raise StoreUnavailable(f"etcd unavailable during {what}: {exc}") from exc
    except grpc.RpcError as exc:
        raise StoreUnavailable(f"etcd error during {what}: {exc.code().name}") from exc
