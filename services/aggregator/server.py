"""Aggregator server assembly."""

from __future__ import annotations

import grpc
import torch
from grpc_health.v1 import health

from services.aggregator.config import AggregatorConfig
from services.aggregator.handlers import Aggregator
from services.aggregator.servicer import AggregatorServicer
from tessera.common.grpc_server import ServiceBinding, create_server, stop_server
from tessera.common.service import run_until_signalled, setup_logging, start_metrics
from tessera.v1 import aggregator_pb2, aggregator_pb2_grpc

__all__ = ["SERVICE_NAME", "create_aggregator_server", "serve"]

SERVICE_NAME = aggregator_pb2.DESCRIPTOR.services_by_name["Aggregator"].full_name


def create_aggregator_server(
    config: AggregatorConfig,
) -> tuple[grpc.Server, int, health.HealthServicer, Aggregator]:
    """Start an aggregator server; return it with its bound port and its core."""
    aggregator = Aggregator(max_payload_bytes=config.max_payload_bytes)
    binding = ServiceBinding(
        SERVICE_NAME,
        aggregator_pb2_grpc.add_AggregatorServicer_to_server,
        AggregatorServicer(aggregator),
    )
    server, port, health_servicer = create_server([binding], address=config.common.address)
    return server, port, health_servicer, aggregator


def serve(config: AggregatorConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    setup_logging(config.common.log_level)
    torch.set_num_threads(config.torch_threads)
    metrics_port = start_metrics(config.common.metrics_port)
    server, port, health_servicer, _ = create_aggregator_server(config)
    run_until_signalled(
        lambda: stop_server(server, health_servicer, grace=2.0),
        ready_file=config.common.ready_file,
        ready_info={"service": "aggregator", "port": port, "metrics_port": metrics_port},
    )
