"""What every service process shares: common flags, logging, metrics port, signal handling."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

__all__ = [
    "CommonConfig",
    "add_common_args",
    "add_etcd_args",
    "run_until_signalled",
    "setup_logging",
    "start_metrics",
]


@dataclass(frozen=True)
class CommonConfig:
    """Settings every service has; flags override ``TESSERA_*`` environment variables."""

    host: str
    port: int
    metrics_port: int | None
    ready_file: Path | None
    log_level: str

    @property
    def address(self) -> str:
        """``host:port`` to bind."""
        return f"{self.host}:{self.port}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CommonConfig:
        """Build from the flags ``add_common_args`` added."""
        return cls(
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
            ready_file=Path(args.ready_file) if args.ready_file else None,
            log_level=args.log_level,
        )


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
