"""Reading a cluster process's Prometheus metrics in end-to-end tests."""

from __future__ import annotations

import urllib.request

from tessera.cli.cluster import LocalCluster


def metric_sum(cluster: LocalCluster, process: str, prefix: str) -> float:
    """Sum of the samples whose line starts with ``prefix`` on ``process``'s /metrics page."""
    port = cluster.metrics_ports()[process]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))
