"""Aggregator server assembly."""

from __future__ import annotations

import grpc
import torch
from grpc_health.v1 import health

from services.aggregator.checkpoint import CheckpointDir
from services.aggregator.config import AggregatorConfig
from services.aggregator.handlers import Aggregator
from services.aggregator.servicer import AggregatorServicer, add_aggregator_servicer
from tessera.common.auth import Role
from tessera.common.grpc_server import ServiceBinding, create_server, stop_server
from tessera.common.service import (
    auth_interceptor,
    run_until_signalled,
    setup_logging,
    start_metrics,
)
from tessera.v1 import aggregator_pb2

__all__ = ["SERVICE_NAME", "create_aggregator_server", "serve"]

SERVICE_NAME = aggregator_pb2.DESCRIPTOR.services_by_name["Aggregator"].full_name

# Who may call what (fail closed: an unlisted method is refused when authentication is on).
AUTH_RULES = {
    f"/{SERVICE_NAME}/OpenJob": frozenset({Role.SERVICE}),
    f"/{SERVICE_NAME}/CloseRound": frozenset({Role.SERVICE}),
    f"/{SERVICE_NAME}/CloseJob": frozenset({Role.SERVICE}),
    f"/{SERVICE_NAME}/PushGradient": frozenset({Role.NODE}),
    f"/{SERVICE_NAME}/PushSmallGradient": frozenset({Role.NODE}),
    f"/{SERVICE_NAME}/GetModel": frozenset({Role.NODE, Role.SUBMITTER, Role.SERVICE}),
}


def create_aggregator_server(
    config: AggregatorConfig,
) -> tuple[grpc.Server, int, health.HealthServicer, Aggregator]:
    """Start an aggregator server; return it with its bound port and its core."""
    aggregator = Aggregator(
        max_payload_bytes=config.max_payload_bytes,
        cluster_key=config.common.cluster_key,
        checkpoints=(
            CheckpointDir(config.checkpoint_dir, sync=config.checkpoint_sync)
            if config.checkpoint_dir
            else None
        ),
    )
    binding = ServiceBinding(
        SERVICE_NAME,
        add_aggregator_servicer,
        AggregatorServicer(aggregator),
    )
    server, port, health_servicer = create_server(
        [binding],
        address=config.common.address,
        interceptors=[auth_interceptor(config.common, AUTH_RULES)],
        credentials=config.common.server_credentials(),
        max_concurrent_rpcs=config.common.max_concurrent_rpcs,
    )
    return server, port, health_servicer, aggregator


def serve(config: AggregatorConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    setup_logging(config.common.log_level)
    torch.set_num_threads(config.torch_threads)
    metrics_port = start_metrics(config.common.metrics_port)
    server, port, health_servicer, aggregator = create_aggregator_server(config)

    def stop() -> None:
        stop_server(server, health_servicer, grace=2.0)
        aggregator.close()

    run_until_signalled(
        stop,
        ready_file=config.common.ready_file,
        ready_info={"service": "aggregator", "port": port, "metrics_port": metrics_port},
    )
