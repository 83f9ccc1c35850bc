"""Helpers shared by the reliability benchmarks (``fuzz.py``, ``heartbeat_load.py``)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REPO",
    "add_repo_to_path",
    "await_ready_file",
    "percentile",
    "proc_status_bytes",
    "rpc_codes",
]

REPO = Path(__file__).resolve().parents[1]


def add_repo_to_path() -> None:
    """Make ``tests.fuzz`` importable when a script runs as ``python bench/<name>.py``."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def proc_status_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``), bytes."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise KeyError(f"{field} not in /proc/{pid}/status")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


_SAMPLE = re.compile(r"^tessera_rpcs_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def rpc_codes(metrics_port: int, timeout: float = 5.0) -> dict[str, float]:
    """The server's own count of answered RPCs by status code (``tessera_rpcs_total``)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        code = labels.get("code", "")
        out[code] = out.get(code, 0.0) + float(match["value"])
    return out


def await_ready_file(
    process: subprocess.Popen[bytes], ready: Path, log: Path, timeout: float = 60.0
) -> dict[str, Any]:
    """Wait until a service writes its ready file; return what it wrote.

    Raises:
        RuntimeError: the process exited, or did not get ready in time (with its log tail).
    """
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"exited with {process.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout}s")
        time.sleep(0.02)
    info: dict[str, Any] = json.loads(ready.read_text())
    return info
