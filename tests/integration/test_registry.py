from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.registry.config import RegistryConfig
from tessera.common.etcd import KeySchema
from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc

Registry = tuple[str, registry_pb2_grpc.RegistryStub]
PROFILE = common_pb2.NodeProfile(hostname="n", cpu_cores=2, throughput=1000.0)


def _register(stub: registry_pb2_grpc.RegistryStub) -> registry_pb2.RegisterResponse:
    return stub.Register(registry_pb2.RegisterRequest(profile=PROFILE), timeout=5)


def test_register_writes_a_lease_bound_record_to_etcd(
    registry: Registry, etcd_client: Any, registry_config: RegistryConfig
) -> None:
    # Execute
    response = _register(registry[1])
    # Assert
    raw, meta = etcd_client.get(KeySchema(registry_config.etcd_prefix).node(response.node_id))
    assert raw is not None
    assert meta.lease_id != 0
    assert response.lease_ttl_seconds == registry_config.lease_ttl == 2
    listed = registry[1].ListNodes(registry_pb2.ListNodesRequest(), timeout=5).nodes
    assert [n.node_id for n in listed] == [response.node_id]
    assert listed[0].profile.throughput == 1000.0


def test_node_vanishes_when_heartbeats_stop(
    registry: Registry, etcd_client: Any, registry_config: RegistryConfig
) -> None:
    response = _register(registry[1])
    key = KeySchema(registry_config.etcd_prefix).node(response.node_id)
    deleted = etcd_client.watch_once(key, timeout=registry_config.lease_ttl + 5)
    assert type(deleted).__name__ == "DeleteEvent"
    with pytest.raises(grpc.RpcError) as info:
        registry[1].Heartbeat(registry_pb2.HeartbeatRequest(node_id=response.node_id), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "register again" in str(info.value.details())


def test_heartbeats_keep_the_node_past_its_ttl(
    registry: Registry, registry_config: RegistryConfig
) -> None:
    response = _register(registry[1])
    deadline = time.monotonic() + 2 * registry_config.lease_ttl
    beats = 0
    while time.monotonic() < deadline:
        registry[1].Heartbeat(registry_pb2.HeartbeatRequest(node_id=response.node_id), timeout=5)
        beats += 1
        time.sleep(registry_config.heartbeat_interval)  # the heartbeat cadence under test
    nodes = registry[1].ListNodes(registry_pb2.ListNodesRequest(), timeout=5).nodes
    assert [n.node_id for n in nodes] == [response.node_id]
    assert beats >= 4


def test_load_is_recorded_when_it_changes(registry: Registry) -> None:
    response = _register(registry[1])
    load = common_pb2.NodeLoad(running_tasks=1, completed_tasks=7)
    registry[1].Heartbeat(
        registry_pb2.HeartbeatRequest(node_id=response.node_id, load=load), timeout=5
    )
    node = registry[1].ListNodes(registry_pb2.ListNodesRequest(), timeout=5).nodes[0]
    assert node.load.completed_tasks == 7


def test_deregister_removes_the_node_at_once(registry: Registry) -> None:
    response = _register(registry[1])
    registry[1].Deregister(registry_pb2.DeregisterRequest(node_id=response.node_id), timeout=5)
    assert list(registry[1].ListNodes(registry_pb2.ListNodesRequest(), timeout=5).nodes) == []


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (common_pb2.NodeProfile(cpu_cores=0, throughput=1), "profile.cpu_cores (0) must be >= 1"),
        (common_pb2.NodeProfile(cpu_cores=1, throughput=0), "profile.throughput (0.0) must be"),
        (
            common_pb2.NodeProfile(cpu_cores=1, throughput=float("inf")),
            "profile.throughput (inf) must be",
        ),
        (
            common_pb2.NodeProfile(cpu_cores=1, throughput=1, gpu_memory_bytes=5),
            "gpu_count is 0",
        ),
        (
            common_pb2.NodeProfile(cpu_cores=1, throughput=1, local_datasets=["../etc/passwd"]),
            "profile.local_datasets entry '../etc/passwd'",
        ),
    ],
)
def test_bad_profiles_get_invalid_argument(
    registry: Registry, profile: common_pb2.NodeProfile, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        registry[1].Register(registry_pb2.RegisterRequest(profile=profile), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(info.value.details())


@pytest.mark.parametrize("node_id", ["", "no-such-node"])
def test_unknown_nodes_get_clear_errors(registry: Registry, node_id: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        registry[1].Heartbeat(registry_pb2.HeartbeatRequest(node_id=node_id), timeout=5)
    expected = grpc.StatusCode.INVALID_ARGUMENT if not node_id else grpc.StatusCode.NOT_FOUND
    assert info.value.code() == expected
    assert "node" in str(info.value.details())


def test_health_and_reflection_are_served(registry: Registry) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(registry[0])
    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="tessera.v1.Registry"), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"tessera.v1.Registry", "grpc.health.v1.Health"} <= names
    channel.close()
