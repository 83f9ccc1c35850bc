"""Paths and readers shared by the deployment tests."""

from __future__ import annotations

import functools
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml

from tessera.common.errors import Unavailable
from tessera.common.etcd.server import find_etcd_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = DEPLOY / "k8s"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"

TESSERA_IMAGE = "tessera"


@functools.cache
def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: script name -> entry point."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        scripts: dict[str, str] = tomllib.load(handle)["project"]["scripts"]
    return scripts


def load_yaml(path: Path) -> Any:
    """One YAML document (merge keys resolved)."""
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def compose_services() -> dict[str, dict[str, Any]]:
    """The ``services:`` of deploy/compose.yaml as written (anchors and merge keys resolved)."""
    services: dict[str, dict[str, Any]] = load_yaml(COMPOSE_FILE)["services"]
    return services


def is_tessera_image(image: str) -> bool:
    """Whether a compose or Kubernetes image reference names the Tessera image."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[0] == TESSERA_IMAGE


@functools.cache
def etcd_flags() -> frozenset[str]:
    """Flags the locally installed etcd accepts, from its ``--help``.

    Raises:
        Unavailable: no etcd binary is installed.
    """
    result = subprocess.run(
        [str(find_etcd_binary()), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    flags = frozenset(
        re.findall(r"^\s+--([a-z0-9][a-z0-9.-]*)", result.stdout + result.stderr, re.M)
    )
    if not flags:
        raise Unavailable("etcd --help listed no flags")
    return flags


def flag_names(args: list[str]) -> list[str]:
    """The ``--name`` of every flag in an etcd argument list (``--name=value`` form)."""
    return [arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")]
