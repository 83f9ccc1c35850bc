"""What every service process shares: common flags, logging, metrics port, signal handling."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import start_http_server

from tessera.common.auth import ClusterKey, RateLimiter, Role
from tessera.common.grpc_auth import AuthInterceptor
from tessera.common.tls import channel_credentials, server_credentials

__all__ = [
    "CommonConfig",
    "auth_interceptor",
    "add_common_args",
    "add_etcd_args",
    "run_until_signalled",
    "setup_logging",
    "start_metrics",
]


@dataclass(frozen=True)
class CommonConfig:
    """Settings every service has; flags override ``TESSERA_*`` environment variables.

    ``cluster_key`` comes from ``TESSERA_CLUSTER_KEY`` only (never a flag: flags show in process
    listings); without it authentication is off. ``tls_*`` name PEM files.
    """

    host: str
    port: int
    metrics_port: int | None
    ready_file: Path | None
    log_level: str
    cluster_key: ClusterKey | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_ca: Path | None = None
    rate_limit: float = 200.0
    max_concurrent_rpcs: int | None = None

    @property
    def address(self) -> str:
        """``host:port`` to bind."""
        return f"{self.host}:{self.port}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CommonConfig:
        """Build from the flags ``add_common_args`` added."""

        def path(value: str) -> Path | None:
            return Path(value) if value else None

        return cls(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
            ready_file=path(args.ready_file),
            log_level=args.log_level,
            cluster_key=ClusterKey.from_env(),
            tls_cert=path(args.tls_cert),
            tls_key=path(args.tls_key),
            tls_client_ca=path(args.tls_client_ca),
            tls_ca=path(args.tls_ca),
            rate_limit=args.rate_limit,
            max_concurrent_rpcs=args.max_concurrent_rpcs or None,
        )

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for this service's server (None = plaintext)."""
        return server_credentials(self.tls_cert, self.tls_key, self.tls_client_ca)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for this process's calls to other services (None = plaintext)."""
        if self.tls_ca is None:
            return None
        return channel_credentials(self.tls_ca, self.tls_cert, self.tls_key)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TESSERA_{name}", default)


def add_common_args(parser: argparse.ArgumentParser, *, default_port: int) -> None:
    """Add --host, --port, --metrics-port, --ready-file and --log-level."""
    parser.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="address to bind")
    parser.add_argument(
        "--port", type=int, default=int(_env("PORT", str(default_port))), help="0 = any free port"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("METRICS_PORT", "-1")),
        help="Prometheus metrics port (0 = any free port, -1 = off)",
    )
    parser.add_argument(
        "--ready-file",
        default=_env("READY_FILE", ""),
        help="write a JSON line with the bound ports here once serving",
    )
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    parser.add_argument("--tls-cert", default=_env("TLS_CERT", ""), help="PEM certificate")
    parser.add_argument("--tls-key", default=_env("TLS_KEY", ""), help="PEM private key")
    parser.add_argument(
        "--tls-client-ca",
        default=_env("TLS_CLIENT_CA", ""),
        help="require client certificates signed by this CA (mutual TLS)",
    )
    parser.add_argument(
        "--tls-ca", default=_env("TLS_CA", ""), help="CA that signed the other services' certs"
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=float(_env("RATE_LIMIT", "200")),
        help="requests per second per caller (RESOURCE_EXHAUSTED beyond)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=int(_env("MAX_CONCURRENT_RPCS", "0")),
        help="RPCs in progress at once, streams included (RESOURCE_EXHAUSTED beyond; 0 = no cap)",
    )


def add_etcd_args(parser: argparse.ArgumentParser) -> None:
    """Add --etcd and --etcd-prefix."""
    parser.add_argument("--etcd", default=_env("ETCD", "127.0.0.1:2379"), help="etcd host:port")
    parser.add_argument("--etcd-prefix", default=_env("ETCD_PREFIX", "/tessera"))


def setup_logging(level: str) -> None:
    """One log format for every service."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def start_metrics(port: int | None) -> int | None:
    """Serve Prometheus metrics on 127.0.0.1-or-host ``port``; return the bound port."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=_env("METRICS_HOST", "127.0.0.1"))
    bound: int = server.server_port
    return bound


def auth_interceptor(config: CommonConfig, rules: Mapping[str, frozenset[Role]]) -> AuthInterceptor:
    """The authentication interceptor for a service with these per-method rules."""
    limiter = RateLimiter(config.rate_limit, burst=2 * config.rate_limit)
    return AuthInterceptor(config.cluster_key, rules, limiter)


def run_until_signalled(
    stop: Callable[[], None], *, ready_file: Path | None, ready_info: dict[str, Any]
) -> None:
    """Write the ready file, block until SIGTERM or SIGINT, then call ``stop``."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(ready_info) + "\n")
        tmp.replace(ready_file)
    logging.getLogger("tessera").info("serving %s", ready_info)
    stopping.wait()
    stop()
