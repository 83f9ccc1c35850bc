"""Prometheus scrape config and the Grafana provisioning and dashboard, against compose.yaml."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    GRAFANA,
    PROMETHEUS_CONFIG,
    REPO,
    compose_services,
    is_tessera_image,
    load_yaml,
)

DASHBOARD = GRAFANA / "dashboards" / "tessera.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "tessera.yaml"

# The dashboard must show each of these.
REQUIRED_METRICS = {
    "tessera_rpcs_total",
    "tessera_rpc_seconds",
    "tessera_worker_tasks_total",
    "tessera_worker_bytes_sent_total",
    "tessera_live_nodes",
    "tessera_jobs",
    "tessera_tasks",
    "tessera_round_seconds",
    "tessera_bytes_received_total",
    "tessera_model_bytes_sent_total",
    "tessera_contributions_total",
    "tessera_model_version",
    "tessera_job_loss",
    "tessera_job_accuracy",
    "tessera_job_macro_f1",
    "tessera_job_perplexity",
    "tessera_job_payload_bytes_total",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _metrics_port(service: dict[str, Any]) -> int | None:
    value = service.get("environment", {}).get("TESSERA_METRICS_PORT")
    return int(value) if value is not None else None


def _scrape_targets() -> dict[str, list[str]]:
    config = load_yaml(PROMETHEUS_CONFIG)
    return {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }


def _panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _expressions() -> list[str]:
    return [t["expr"] for p in _panels() for t in p.get("targets", [])]


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is unavailable (Debian package: prometheus)")
    return promtool


def test_promtool_accepts_the_scrape_config() -> None:
    result = subprocess.run(
        [_promtool(), "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_scrape_target_is_a_compose_service_on_a_port_it_serves() -> None:
    # Prepare
    services = compose_services()
    # Assert
    for job, targets in _scrape_targets().items():
        for target in targets:
            host, _, port = target.rpartition(":")
            if host == "localhost":
                assert job == "prometheus", f"{job}: {target} is not on the compose network"
                continue
            assert host in services, f"{job}: {target} names no compose service"
            service = services[host]
            if is_tessera_image(service.get("image", "")):
                assert _metrics_port(service) == int(port), f"{target}: wrong metrics port"
            else:
                assert any(f":{port}" in arg for arg in service["command"]), target


def test_every_tessera_process_is_scraped() -> None:
    # Prepare
    scraped = {t for targets in _scrape_targets().values() for t in targets}
    services = compose_services()
    # Assert
    for name, service in services.items():
        if is_tessera_image(service.get("image", "")):
            assert f"{name}:{_metrics_port(service)}" in scraped, f"{name} is not scraped"
    assert "etcd:2379" in scraped


def test_worker_metrics_ports_follow_the_convention() -> None:
    services = compose_services()
    ports = sorted(_metrics_port(s) or 0 for n, s in services.items() if n.startswith("worker-"))
    assert ports == [9104, 9105, 9106]
    assert [_metrics_port(services[n]) for n in ("registry", "scheduler", "aggregator")] == [
        9101,
        9102,
        9103,
    ]


def test_grafana_datasource_points_at_the_prometheus_service() -> None:
    # Prepare
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    prometheus = compose_services()["prometheus"]
    # Assert
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in prometheus["ports"])


def test_grafana_mounts_what_its_provisioning_reads() -> None:
    # Prepare
    grafana = compose_services()["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    (provider,) = load_yaml(PROVIDERS)["providers"]
    # Assert
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent.as_posix() == provider["options"]["path"]
    assert (GRAFANA / "dashboards" / home.name).is_file()


def test_every_panel_queries_the_provisioned_datasource() -> None:
    # Prepare
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    queried = [p for p in _panels() if p["type"] != "row"]
    # Assert
    assert queried
    for panel in queried:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, panel["title"]


def _defined_metrics() -> set[str]:
    """Every ``"tessera_..."`` string literal in the services and the shared kernel."""
    names: set[str] = set()
    for package in ("tessera", "services"):
        for path in (REPO / package).rglob("*.py"):
            if "v1" not in path.relative_to(REPO).parts:
                names.update(re.findall(r"[\"'](tessera_[a-z0-9_]+)[\"']", path.read_text()))
    return names


def test_the_dashboard_shows_the_required_metrics_and_only_exported_ones() -> None:
    # Prepare
    defined = _defined_metrics()
    used = set()
    for expression in _expressions():
        for name in re.findall(r"\btessera_[a-z0-9_]+", expression):
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            used.add(base if base in defined else name)
    # Assert
    assert used - defined == set(), "queries for metrics the code does not export"
    assert REQUIRED_METRICS - used == set(), "metrics with no panel"


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    # Prepare
    panels = _panels()
    cells: dict[tuple[int, int], str] = {}
    # Assert
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Prepare: Grafana's variables replaced by what they expand to, as recording rules.
    promtool = _promtool()
    substitutions = {"$__rate_interval": "1m", "$job_id": ".*", "$service": ".*"}
    rules = []
    for number, expression in enumerate(_expressions()):
        for variable, value in substitutions.items():
            expression = expression.replace(variable, value)
        assert "$" not in expression, f"unsubstituted variable in {expression}"
        rules.append({"record": f"tessera:dashboard_query_{number}", "expr": expression})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    # Execute
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Assert
    assert result.returncode == 0, result.stdout + result.stderr
