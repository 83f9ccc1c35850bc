"""gRPC adapter of the registry: protos in, store calls, protos out."""

from __future__ import annotations

import time
import uuid

import grpc

from services.registry.admission import validate_profile
from services.registry.config import RegistryConfig
from services.registry.store import NodeStore
from tessera.common.grpc_auth import require_node
from tessera.common.ids import check_id
from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc

__all__ = ["RegistryServicer"]


def _require_node_id(node_id: str) -> str:
    check_id(node_id, "node_id")
    require_node(node_id)
    return node_id


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """Register, Heartbeat, Deregister, ListNodes."""

    def __init__(self, store: NodeStore, config: RegistryConfig) -> None:
        self._store = store
        self._config = config

    def Register(  # noqa: D102, N802 - names fixed by the proto
        self, request: registry_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> registry_pb2.RegisterResponse:
        validate_profile(request.profile)
        node = common_pb2.Node(
            node_id=uuid.uuid4().hex[:16], profile=request.profile, registered_at=time.time()
        )
        self._store.add(node, self._config.lease_ttl)
        key = self._config.common.cluster_key
        return registry_pb2.RegisterResponse(
            node_id=node.node_id,
            heartbeat_interval_seconds=self._config.heartbeat_interval,
            lease_ttl_seconds=self._config.lease_ttl,
            node_secret=key.node_secret(node.node_id) if key is not None else b"",
        )

    def Heartbeat(  # noqa: D102, N802
        self, request: registry_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> registry_pb2.HeartbeatResponse:
        load = request.load if request.HasField("load") else None
        ttl = self._store.refresh(_require_node_id(request.node_id), load)
        return registry_pb2.HeartbeatResponse(lease_ttl_seconds=ttl)

    def Deregister(  # noqa: D102, N802
        self, request: registry_pb2.DeregisterRequest, context: grpc.ServicerContext
    ) -> registry_pb2.DeregisterResponse:
        self._store.remove(_require_node_id(request.node_id))
        return registry_pb2.DeregisterResponse()

    def ListNodes(  # noqa: D102, N802
        self, request: registry_pb2.ListNodesRequest, context: grpc.ServicerContext
    ) -> registry_pb2.ListNodesResponse:
        return registry_pb2.ListNodesResponse(nodes=self._store.list())
