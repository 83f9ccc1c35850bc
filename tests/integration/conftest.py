"""Fixtures that run real services in-process on 127.0.0.1:0 against the session etcd."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from services.registry.config import RegistryConfig
from services.registry.server import create_registry_server
from tessera.common.service import CommonConfig
from tessera.v1 import registry_pb2_grpc

LOOPBACK = CommonConfig(
    host="127.0.0.1", port=0, metrics_port=None, ready_file=None, log_level="INFO"
)


@pytest.fixture
def registry_config(etcd_server: Any, etcd_prefix: str) -> RegistryConfig:
    return RegistryConfig(
        common=LOOPBACK,
        etcd=etcd_server.endpoint,
        etcd_prefix=etcd_prefix,
        heartbeat_interval=0.5,
        patience=4,
    )


@pytest.fixture
def registry(
    registry_config: RegistryConfig,
) -> Iterator[tuple[str, registry_pb2_grpc.RegistryStub]]:
    server, port, _health = create_registry_server(registry_config)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield f"127.0.0.1:{port}", registry_pb2_grpc.RegistryStub(channel)
    channel.close()
    server.stop(0).wait()
