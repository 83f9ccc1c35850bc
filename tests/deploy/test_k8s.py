"""deploy/k8s: schema validation (offline, bundled schemas) and the project's own rules."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from tessera.common.errors import Unavailable
from tests.deploy.support import (
    K8S,
    console_scripts,
    etcd_flags,
    flag_names,
    is_tessera_image,
    load_yaml,
    load_yaml_all,
)

# Native gRPC probes are GA since 1.27; validate against a recent release the package bundles.
KUBERNETES_VERSION = "1.33.0"

MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
GRPC_PORTS = {"registry": 50051, "scheduler": 50052, "aggregator": 50053}
METRICS_PORTS = {"registry": 9101, "scheduler": 9102, "aggregator": 9103, "worker": 9104}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in MANIFESTS for doc in load_yaml_all(path)]


def _workloads() -> list[dict[str, Any]]:
    return [doc for _path, doc in _documents() if doc["kind"] in WORKLOAD_KINDS]


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _p, doc in _documents() if doc["kind"] == kind}


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = spec["containers"] + spec.get("initContainers", [])
    return containers


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is unavailable: pip install kubernetes-validate",
    )


def test_the_bundled_schemas_include_the_version_used(kubernetes_validate: Any) -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_resource_matches_the_kubernetes_schema(kubernetes_validate: Any, path: Path) -> None:
    documents = load_yaml_all(path)
    assert documents, f"{path.name} is empty"
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "breakage",
    ["misspelt field", "named port in a grpc probe", "string replicas"],
)
def test_the_schema_check_rejects_a_broken_deployment(
    kubernetes_validate: Any, breakage: str
) -> None:
    # Prepare
    deployment = copy.deepcopy(_by_kind("Deployment")["registry"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    if breakage == "misspelt field":
        container["securityContext"]["readOnlyRootFileSystem"] = True
    elif breakage == "named port in a grpc probe":
        container["readinessProbe"]["grpc"]["port"] = "grpc"
    else:
        deployment["spec"]["replicas"] = "one"
    # Execute, Assert
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_names_the_namespace() -> None:
    # Prepare
    kustomization = load_yaml(K8S / "kustomization.yaml")
    namespaces = _by_kind("Namespace")
    # Assert
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    assert list(namespaces) == [kustomization["namespace"]]
    for _path, doc in _documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == kustomization["namespace"]


def test_every_pod_runs_as_uid_10001_with_runtime_default_seccomp() -> None:
    for workload in _workloads():
        context = workload["spec"]["template"]["spec"]["securityContext"]
        name = workload["metadata"]["name"]
        assert context.get("runAsNonRoot") is True, name
        assert context.get("runAsUser") == 10001, name
        assert context.get("seccompProfile", {}).get("type") == "RuntimeDefault", name


def test_every_container_is_locked_down_and_bounded() -> None:
    for workload in _workloads():
        for container in _containers(workload):
            name = f"{workload['metadata']['name']}/{container['name']}"
            context = container.get("securityContext", {})
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("runAsNonRoot") is True, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, name


def test_tessera_containers_get_a_writable_tmp_from_an_empty_dir() -> None:
    for workload in _workloads():
        spec = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in _containers(workload):
            if not is_tessera_image(container["image"]):
                continue
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, workload["metadata"]["name"]
            assert "emptyDir" in volumes[mounts["/tmp"]]


def test_services_run_their_console_script_with_native_grpc_probes_on_their_port() -> None:
    # Prepare
    deployments = _by_kind("Deployment")
    services = _by_kind("Service")
    # Assert
    assert set(GRPC_PORTS) | {"worker"} == set(deployments)
    for name, grpc_port in GRPC_PORTS.items():
        (container,) = _containers(deployments[name])
        assert container["command"] == [f"tessera-{name}"]
        assert container["command"][0] in console_scripts()
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": METRICS_PORTS[name]}
        env = _env(container)
        assert env["TESSERA_PORT"] == str(grpc_port)
        assert env["TESSERA_METRICS_PORT"] == str(METRICS_PORTS[name])
        assert env["TESSERA_HOST"] == env["TESSERA_METRICS_HOST"] == "0.0.0.0"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": grpc_port}, f"{name} {probe}"
        service_ports = {p["name"]: p for p in services[name]["spec"]["ports"]}
        assert service_ports["grpc"]["port"] == grpc_port
        assert service_ports["grpc"]["targetPort"] == "grpc"


def test_workers_dial_out_only_and_are_named_after_their_pod() -> None:
    # Prepare
    worker = _by_kind("Deployment")["worker"]
    (container,) = _containers(worker)
    names = {e["name"]: e for e in container["env"]}
    # Assert
    assert container["command"] == ["tessera-worker"]
    assert [p["name"] for p in container["ports"]] == ["metrics"]
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(container)
    assert names["TESSERA_WORKER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "worker" not in _by_kind("Service")


def test_every_address_a_container_dials_is_a_service_port() -> None:
    # Prepare
    services = {
        name: {p["port"] for p in svc["spec"]["ports"]} for name, svc in _by_kind("Service").items()
    }
    dialled = 0
    # Assert
    for workload in _workloads():
        for container in _containers(workload):
            for key in (
                "TESSERA_ETCD",
                "TESSERA_REGISTRY",
                "TESSERA_SCHEDULER",
                "TESSERA_AGGREGATOR",
            ):
                value = _env(container).get(key)
                if value is None:
                    continue
                host, _, port = value.rpartition(":")
                assert int(port) in services.get(host, set()), f"{key}={value}: no such Service"
                dialled += 1
    # registry and scheduler -> etcd, scheduler -> aggregator, worker -> registry and scheduler
    assert dialled == 5


def test_etcd_is_a_three_member_cluster_behind_a_headless_service() -> None:
    # Prepare
    (etcd,) = _by_kind("StatefulSet").values()
    headless = _by_kind("Service")[etcd["spec"]["serviceName"]]
    (container,) = _containers(etcd)
    args = container["args"]
    cluster = next(a for a in args if a.startswith("--initial-cluster="))
    # Assert
    assert etcd["spec"]["replicas"] == 3
    assert etcd["spec"]["podManagementPolicy"] == "Parallel"
    assert headless["spec"]["clusterIP"] == "None"
    members = re.findall(r"(etcd-\d)=http://(etcd-\d)\.", cluster)
    assert members == [(f"etcd-{n}", f"etcd-{n}") for n in range(3)]
    version = re.fullmatch(r".*:v(\d+)\.(\d+)\.(\d+)", container["image"])
    assert version is not None
    assert tuple(int(v) for v in version.groups()) >= (3, 5, 11), "/livez and /readyz need 3.5.11"
    try:
        known = etcd_flags()
    except Unavailable as exc:
        pytest.skip(f"no local etcd to ask for its flags: {exc}")
    assert [f for f in flag_names(args) if f not in known] == []
