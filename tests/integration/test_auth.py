"""Every rejection over real gRPC: no token, forged, expired, replayed, wrong node, wrong task,
rate limit; and TLS / mutual TLS."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.aggregator.config import AggregatorConfig
from services.aggregator.server import create_aggregator_server
from services.registry.config import RegistryConfig
from services.registry.server import create_registry_server
from tessera.common.auth import ClusterKey, NodeSigner, Role
from tessera.common.client_auth import with_credentials
from tessera.common.tls import channel_credentials
from tessera.v1 import (
    aggregator_pb2,
    aggregator_pb2_grpc,
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
)

from .conftest import LOOPBACK

KEY = ClusterKey.generate()
PROFILE = common_pb2.NodeProfile(hostname="n", cpu_cores=1, throughput=10.0)


@pytest.fixture
def secured(registry_config: RegistryConfig) -> Iterator[str]:
    common = dataclasses.replace(LOOPBACK, cluster_key=KEY, rate_limit=1000.0)
    server, port, _ = create_registry_server(dataclasses.replace(registry_config, common=common))
    yield f"127.0.0.1:{port}"
    server.stop(0).wait()


def _stub(address: str, token: str | None) -> registry_pb2_grpc.RegistryStub:
    channel = with_credentials(
        grpc.insecure_channel(address), (lambda _m: token) if token else None
    )
    return registry_pb2_grpc.RegistryStub(channel)


def _refused(
    call: Any, fragment: str, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code
    assert fragment in str(info.value.details())


def _register(address: str) -> registry_pb2.RegisterResponse:
    stub = _stub(address, KEY.mint(Role.JOIN, "volunteer"))
    response: registry_pb2.RegisterResponse = stub.Register(
        registry_pb2.RegisterRequest(profile=PROFILE), timeout=5
    )
    return response


def test_joining_needs_a_valid_join_token(secured: str) -> None:
    request = registry_pb2.RegisterRequest(profile=PROFILE)
    _refused(lambda: _stub(secured, None).Register(request, timeout=5), "needs credentials")
    forged = ClusterKey.generate().mint(Role.JOIN, "x")
    _refused(lambda: _stub(secured, forged).Register(request, timeout=5), "forged credentials")
    expired = KEY.mint(Role.JOIN, "x", ttl=-5)
    _refused(lambda: _stub(secured, expired).Register(request, timeout=5), "credentials expired")
    submitter = KEY.mint(Role.SUBMITTER, "alice")
    _refused(
        lambda: _stub(secured, submitter).Register(request, timeout=5),
        "a submitter credential may not call /tessera.v1.Registry/Register (allowed: join)",
    )
    response = _register(secured)
    assert response.node_secret == KEY.node_secret(response.node_id)


def test_node_calls_need_fresh_proofs_for_the_node_itself(secured: str) -> None:
    node = _register(secured)
    other = _register(secured)
    signer = NodeSigner(node.node_id, node.node_secret)
    method = "/tessera.v1.Registry/Heartbeat"
    beat = registry_pb2.HeartbeatRequest(node_id=node.node_id)
    # A fresh proof per call works.
    for _ in range(3):
        _stub(secured, signer.proof(method)).Heartbeat(beat, timeout=5)
    # The same proof twice is a replay.
    proof = signer.proof(method)
    _stub(secured, proof).Heartbeat(beat, timeout=5)
    _refused(lambda: _stub(secured, proof).Heartbeat(beat, timeout=5), "replayed request")
    # A proof for another RPC, or acting for another node, is refused.
    wrong_method = signer.proof("/tessera.v1.Registry/Deregister")
    _refused(lambda: _stub(secured, wrong_method).Heartbeat(beat, timeout=5), "was made for")
    hijack = registry_pb2.HeartbeatRequest(node_id=other.node_id)
    _refused(
        lambda: _stub(secured, signer.proof(method)).Heartbeat(hijack, timeout=5),
        f"node {node.node_id!r} may not act for node {other.node_id!r}",
    )
    # Health stays open for probes.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(secured))
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1


def test_a_caller_over_its_rate_gets_resource_exhausted(registry_config: RegistryConfig) -> None:
    common = dataclasses.replace(LOOPBACK, cluster_key=KEY, rate_limit=2.0)
    server, port, _ = create_registry_server(dataclasses.replace(registry_config, common=common))
    try:
        stub = _stub(f"127.0.0.1:{port}", KEY.mint(Role.SUBMITTER, "greedy"))
        codes = []
        for _ in range(12):
            try:
                stub.ListNodes(registry_pb2.ListNodesRequest(), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
                assert "rate limit: submitter:greedy may make 2 requests per second" in str(
                    exc.details()
                )
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert codes[0] == grpc.StatusCode.OK
    finally:
        server.stop(0).wait()


def test_a_node_can_push_only_for_its_own_tasks() -> None:
    common = dataclasses.replace(LOOPBACK, cluster_key=KEY)
    server, port, _, core = create_aggregator_server(AggregatorConfig(common=common))
    try:
        core.open_job("job", common_pb2.JobSpec(model="mlp", dataset="digits", tasks_per_round=2,
                                                 learning_rate=0.1, optimizer="sgd"))  # fmt: skip
        signer = NodeSigner("n1", KEY.node_secret("n1"))
        channel = with_credentials(grpc.insecure_channel(f"127.0.0.1:{port}"), signer.proof)
        stub = aggregator_pb2_grpc.AggregatorStub(channel)

        def push(ticket: str, node_id: str = "n1") -> Any:
            header = aggregator_pb2.ContributionHeader(
                job_id="job", round=0, task_index=1, node_id=node_id, samples=1, ticket=ticket
            )
            return stub.PushGradient(iter([aggregator_pb2.GradientFrame(header=header)]), timeout=5)

        _refused(lambda: push(""), "carries no task ticket")
        _refused(lambda: push(KEY.mint_ticket("job", 0, 0, "n1")), "task job/0/1 is not assigned")
        _refused(lambda: push(KEY.mint_ticket("job", 0, 1, "n2"), "n2"), "may not act for node")
        # With its own ticket the stream passes authentication and reaches validation.
        receipt = push(KEY.mint_ticket("job", 0, 1, "n1"))
        assert receipt.status == aggregator_pb2.RECEIPT_STATUS_REJECTED
        assert "tensor names do not match" in receipt.reason
    finally:
        server.stop(0).wait()


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def make(name: str, issuer: Any, issuer_key: Any, *, ca: bool, san: bool) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(issuer_key or key, hashes.SHA256()), key

    ca_cert, ca_key = make("tessera test CA", None, None, ca=True, san=False)
    paths = {}
    for name, (cert, key) in {
        "ca": (ca_cert, ca_key),
        "server": make("server", ca_cert.subject, ca_key, ca=False, san=True),
        "client": make("client", ca_cert.subject, ca_key, ca=False, san=False),
    }.items():
        paths[f"{name}.pem"] = directory / f"{name}.pem"
        paths[f"{name}.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{name}.key"] = directory / f"{name}.key"
        paths[f"{name}.key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(
    registry_config: RegistryConfig, tmp_path: Path
) -> None:
    pem = _certificates(tmp_path)
    common = dataclasses.replace(
        LOOPBACK,
        tls_cert=pem["server.pem"],
        tls_key=pem["server.key"],
        tls_client_ca=pem["ca.pem"],
    )
    server, port, _ = create_registry_server(dataclasses.replace(registry_config, common=common))
    address = f"127.0.0.1:{port}"
    request = registry_pb2.RegisterRequest(profile=PROFILE)
    try:
        trusted = channel_credentials(pem["ca.pem"], pem["client.pem"], pem["client.key"])
        assert trusted is not None
        stub = registry_pb2_grpc.RegistryStub(grpc.secure_channel(address, trusted))
        assert stub.Register(request, timeout=5).node_id
        anonymous = channel_credentials(pem["ca.pem"])
        assert anonymous is not None
        no_cert = registry_pb2_grpc.RegistryStub(grpc.secure_channel(address, anonymous))
        _refused(lambda: no_cert.Register(request, timeout=5), "", grpc.StatusCode.UNAVAILABLE)
        plain = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(address))
        _refused(lambda: plain.Register(request, timeout=5), "", grpc.StatusCode.UNAVAILABLE)
    finally:
        server.stop(0).wait()
