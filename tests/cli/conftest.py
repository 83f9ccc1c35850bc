"""One local cluster for the CLI tests that need servers, and the CLI run against it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tessera.cli.cluster import LocalCluster
from tessera.client import Client, Job

# The worker started with local data holds this data set; the other one holds none.
LOCAL_DATASET = "digits"


@dataclass(frozen=True)
class CliCluster:
    """A running ``LocalCluster``: ``worker-0`` holds no data, ``worker-1`` a ``digits.npz``."""

    cluster: LocalCluster

    def client(self) -> Client:
        """The real SDK client of the cluster, with the submitter token."""
        return Client(
            self.cluster.scheduler_address,
            registry=self.cluster.registry_address,
            token=self.cluster.token,
        )

    def tessera(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``python -m tessera.cli ARGS`` as a user runs it: addresses and token in the env."""
        env = {
            **os.environ,
            "TESSERA_SCHEDULER": self.cluster.scheduler_address,
            "TESSERA_REGISTRY": self.cluster.registry_address,
            "TESSERA_TOKEN": self.cluster.token or "",
            # Wide enough that rich does not wrap a ``--watch`` line.
            "COLUMNS": "200",
        }
        return subprocess.run(
            [sys.executable, "-m", "tessera.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )

    def submit(self, *args: str) -> Job:
        """``tessera submit ARGS``; the job as the scheduler stores it, then cancelled.

        The command must print the job's id and nothing else. Only the stored spec matters to
        the callers, so the job stops at once (cancelling an ended job leaves it as it is).
        """
        result = self.tessera("submit", *args)
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip()
        assert job_id and result.stdout == job_id + "\n", result.stdout
        with self.client() as client:
            job = client.get_job(job_id)
            client.cancel(job_id)
        return job


def _write_local_data(folder: Path, samples: int = 64) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 64)).astype(np.float32)
    y = (np.arange(samples) % 10).astype(np.int64)
    np.savez(folder / f"{LOCAL_DATASET}.npz", x=x, y=y)


def _wait_for_nodes(client: Client, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(client.list_nodes()) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} workers registered after {timeout:g}s")
        time.sleep(0.1)


@pytest.fixture(scope="package")
def cli_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    """Started once for the CLI tests; both workers are registered when it is handed out."""
    root = tmp_path_factory.mktemp("cli-cluster")
    data = root / "data"
    data.mkdir()
    _write_local_data(data)
    with LocalCluster(workers=1, log_dir=root / "logs") as cluster:
        cluster.add_worker(local_data=data)
        served = CliCluster(cluster)
        with served.client() as client:
            _wait_for_nodes(client, 2)
        yield served
