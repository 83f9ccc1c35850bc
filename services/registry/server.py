"""Registry server assembly."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health

from services.registry.config import RegistryConfig
from services.registry.servicer import RegistryServicer
from services.registry.store import EtcdNodeStore
from tessera.common.auth import Role
from tessera.common.etcd import KeySchema, connect
from tessera.common.grpc_server import ServiceBinding, create_server, stop_server
from tessera.common.service import (
    auth_interceptor,
    run_until_signalled,
    setup_logging,
    start_metrics,
)
from tessera.v1 import registry_pb2, registry_pb2_grpc

__all__ = ["SERVICE_NAME", "create_registry_server", "serve"]

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name

# Who may call what (fail closed: an unlisted method is refused when authentication is on).
AUTH_RULES = {
    f"/{SERVICE_NAME}/Register": frozenset({Role.JOIN}),
    f"/{SERVICE_NAME}/Heartbeat": frozenset({Role.NODE}),
    f"/{SERVICE_NAME}/Deregister": frozenset({Role.NODE}),
    f"/{SERVICE_NAME}/ListNodes": frozenset({Role.SUBMITTER, Role.SERVICE}),
}


def create_registry_server(
    config: RegistryConfig, etcd_client: Any | None = None
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Start a registry server on ``config.common.address``; return it with its bound port."""
    client = etcd_client or connect(config.etcd)
    store = EtcdNodeStore(client, KeySchema(config.etcd_prefix))
    binding = ServiceBinding(
        SERVICE_NAME,
        registry_pb2_grpc.add_RegistryServicer_to_server,
        RegistryServicer(store, config),
    )
    return create_server(
        [binding],
        address=config.common.address,
        interceptors=[auth_interceptor(config.common, AUTH_RULES)],
        credentials=config.common.server_credentials(),
        max_concurrent_rpcs=config.common.max_concurrent_rpcs,
    )


def serve(config: RegistryConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    setup_logging(config.common.log_level)
    metrics_port = start_metrics(config.common.metrics_port)
    server, port, health_servicer = create_registry_server(config)
    run_until_signalled(
        lambda: stop_server(server, health_servicer, grace=2.0),
        ready_file=config.common.ready_file,
        ready_info={"service": "registry", "port": port, "metrics_port": metrics_port},
    )
