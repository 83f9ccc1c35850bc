"""A round closes at its deadline once a quorum is in; the straggler's late work never counts."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from tessera.cli.cluster import LocalCluster
from tessera.client import Client, EventKind, JobConfig, JobState

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_deadline_with_quorum_drops_the_straggler_and_rejects_its_late_push(
    tmp_path: Path,
) -> None:
    # Prepare: three normal workers and one 200x slower; round robin gives each one task.
    spec = JobConfig(
        rounds=5,
        min_nodes=4,
        tasks_per_round=4,
        batch_size=0,
        hidden_sizes=(512, 512),
        policy="round_robin",
        round_deadline_seconds=0.5,
        quorum=0.75,
    )
    with LocalCluster(workers=4, worker_slowdowns=[1, 1, 1, 200], log_dir=tmp_path) as cluster:
        with Client(
            cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
        ) as client:
            # Execute
            job = client.submit(spec)
            dropped = [e.message for e in job.watch() if e.kind is EventKind.TASKS_DROPPED]
            final = job.get()
            rounds = client.metrics(job.job_id)
        # The straggler finishes its first task long after that round closed; wait for its push.
        stale = 'tessera_contributions_total{decision="rejected",reason="stale"}'
        aggregator = cluster.metrics_ports()["aggregator"]
        deadline = time.monotonic() + 60
        metrics = ""
        while stale not in metrics and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{aggregator}/metrics") as response:
                metrics = response.read().decode()
            time.sleep(0.2)
    # Assert
    assert final.state is JobState.SUCCEEDED, final.message
    assert final.rounds_completed == 5
    assert len(dropped) >= 4, dropped
    assert all("its deadline passed with a quorum in (3 of 4 reported)" in m for m in dropped)
    assert all(m.contributions >= 3 for m in rounds)
    assert stale in metrics
    applied = [line for line in metrics.splitlines() if 'decision="applied"' in line]
    assert applied and float(applied[0].rsplit(" ", 1)[1]) == sum(m.contributions for m in rounds)
