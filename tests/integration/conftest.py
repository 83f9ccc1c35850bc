"""Fixtures that run real services in-process on 127.0.0.1:0 against the session etcd."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from services.aggregator.config import AggregatorConfig
from services.aggregator.handlers import Aggregator
from services.aggregator.server import create_aggregator_server
from services.registry.config import RegistryConfig
from services.registry.server import create_registry_server
from services.scheduler.config import SchedulerConfig
from services.scheduler.server import create_scheduler_server
from tessera.common.service import CommonConfig
from tessera.v1 import aggregator_pb2_grpc, registry_pb2_grpc, scheduler_pb2_grpc

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


@dataclass
class Cluster:
    """In-process registry, aggregator and scheduler on loopback, sharing the session etcd."""

    registry: registry_pb2_grpc.RegistryStub
    scheduler: scheduler_pb2_grpc.SchedulerStub
    aggregator: aggregator_pb2_grpc.AggregatorStub
    aggregator_core: Aggregator
    scheduler_address: str
    etcd_prefix: str


@pytest.fixture
def services(registry_config: RegistryConfig, etcd_server: Any) -> Iterator[Cluster]:
    reg_server, reg_port, _ = create_registry_server(registry_config)
    agg_server, agg_port, _, agg_core = create_aggregator_server(AggregatorConfig(common=LOOPBACK))
    scheduler = create_scheduler_server(
        SchedulerConfig(
            common=LOOPBACK,
            etcd=etcd_server.endpoint,
            etcd_prefix=registry_config.etcd_prefix,
            aggregator=f"127.0.0.1:{agg_port}",
            max_workers=32,
        )
    )
    deadline = time.monotonic() + 30
    while not scheduler.core.leading:
        assert time.monotonic() < deadline, "the scheduler was not elected"
        time.sleep(0.01)
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{port}") for port in (reg_port, scheduler.port, agg_port)
    ]
    yield Cluster(
        registry_pb2_grpc.RegistryStub(channels[0]),
        scheduler_pb2_grpc.SchedulerStub(channels[1]),
        aggregator_pb2_grpc.AggregatorStub(channels[2]),
        agg_core,
        f"127.0.0.1:{scheduler.port}",
        registry_config.etcd_prefix,
    )
    for channel in channels:
        channel.close()
    scheduler.stop(grace=0)
    agg_server.stop(0).wait()
    reg_server.stop(0).wait()
