"""The whole system as separate processes: etcd, four services, workers (``LocalCluster``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.cli.app import DEMO_JOB
from tessera.cli.cluster import LocalCluster
from tessera.client import Client, EventKind, JobHandle, JobState
from tests.e2e.scrape import metric_sum

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(workers=3, heartbeat_interval=0.5, patience=4, log_dir=tmp_path) as c:
        yield c


def test_tessera_up_trains_the_demo_to_the_target_and_leaves_no_process() -> None:
    # Execute: the README's first command, as a user runs it.
    result = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "up", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    # Assert
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["test_accuracy"] >= 0.97
    assert 1 <= summary["rounds"] <= DEMO_JOB.rounds
    # Every process of that cluster named its log directory on its command line.
    found = re.search(r"logs in\s+(\S+?)\)", result.stderr)
    assert found is not None, result.stderr[-2000:]
    etcd = re.search(r"etcd\s+(127\.0\.0\.1:\d+)", result.stderr)
    assert etcd is not None
    for pattern in (found.group(1), f"listen-client-urls=http://{etcd.group(1)}"):
        leftovers = subprocess.run(
            ["pgrep", "-f", pattern], capture_output=True, text=True, check=False
        ).stdout.split()
        assert leftovers == [], pattern


def test_killed_worker_lease_expires_and_its_tasks_are_reassigned(cluster: LocalCluster) -> None:
    # Prepare
    with Client(
        cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
    ) as client:
        spec = DEMO_JOB.with_(
            min_nodes=3, tasks_per_round=3, target_accuracy=0.0, rounds=40, policy="round_robin"
        )
        handle = client.submit(spec)
        events = client.watch(handle.job_id)
        killed = threading.Event()
        reassigned: list[str] = []
        final = None
        # Execute: SIGKILL a worker once training is under way; no deregistration happens.
        for event in events:
            if event.kind is EventKind.ROUND_COMPLETED and not killed.is_set():
                if event.metrics is not None and event.metrics.round >= 2:
                    cluster.kill_worker(0)
                    killed.set()
            if event.kind is EventKind.TASK_REASSIGNED:
                reassigned.append(event.message)
            if event.kind is EventKind.FINISHED:
                final = event.job
        # Assert
        assert killed.is_set()
        assert final is not None
        assert final.state is JobState.SUCCEEDED, final.message
        assert final.rounds_completed == 40
        assert any("lost nodes: ['" in m for m in reassigned), reassigned
        assert len(client.list_nodes()) == 2


def test_a_restarted_scheduler_carries_on_the_job_from_etcd(cluster: LocalCluster) -> None:
    # Prepare
    with _client(cluster) as client:
        handle = _submit_and_wait_for_round(client, rounds=30, after=4)
        # Execute: SIGKILL the scheduler mid-job and start it again on the same port.
        cluster.kill_service("scheduler")
        cluster.restart_service("scheduler")
        final = handle.wait()
    # Assert: the job finished every round; the aggregator applied each task exactly once.
    assert final.state is JobState.SUCCEEDED, final.message
    assert final.rounds_completed == 30
    assert final.model_version == 30
    applied = metric_sum(cluster, "aggregator", 'tessera_contributions_total{decision="applied"')
    assert applied == 30 * 3


def _client(cluster: LocalCluster) -> Client:
    return Client(cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token)


def _submit_and_wait_for_round(client: Client, rounds: int, after: int) -> JobHandle:
    """Submit a job of ``rounds`` rounds over three tasks; return once round ``after`` is done."""
    spec = DEMO_JOB.with_(min_nodes=3, tasks_per_round=3, target_accuracy=0.0, rounds=rounds)
    handle = client.submit(spec)
    for event in handle.watch():
        if event.kind is EventKind.ROUND_COMPLETED and event.metrics is not None:
            if event.metrics.round >= after:
                break
    return handle


def test_an_etcd_restart_mid_job_loses_nothing(cluster: LocalCluster) -> None:
    # Prepare
    with _client(cluster) as client:
        handle = _submit_and_wait_for_round(client, rounds=25, after=3)
        # Execute: SIGKILL etcd, then bring it back with the same data on the same port.
        cluster.etcd.kill()
        cluster.etcd.restart()
        final = handle.wait()
        nodes = client.list_nodes()
    # Assert
    assert final.state is JobState.SUCCEEDED, final.message
    assert final.rounds_completed == 25
    assert len(nodes) == 3
    applied = metric_sum(cluster, "aggregator", 'tessera_contributions_total{decision="applied"')
    assert applied == 25 * 3


def test_a_standby_scheduler_takes_over_when_the_leader_dies(tmp_path: Path) -> None:
    with LocalCluster(
        workers=3, heartbeat_interval=0.5, patience=4, log_dir=tmp_path, schedulers=2
    ) as cluster:
        with _client(cluster) as client:
            handle = _submit_and_wait_for_round(client, rounds=25, after=3)
            leader = _leader(cluster)
            # Execute: SIGKILL the leader; its lease lapses and the standby is elected.
            cluster.kill_service(leader)
            final = handle.wait()
        # Assert
        assert final.state is JobState.SUCCEEDED, final.message
        assert final.rounds_completed == 25
        assert _leader(cluster) != leader
        applied = metric_sum(
            cluster, "aggregator", 'tessera_contributions_total{decision="applied"'
        )
        assert applied == 25 * 3


def _leader(cluster: LocalCluster) -> str:
    """The name of the scheduler process that holds the election key."""
    from tessera.common.etcd import KeySchema, connect

    client = connect(cluster.etcd.endpoint)
    try:
        value, _ = client.get(KeySchema().election("scheduler"))
    finally:
        client.close()
    address = value.decode()
    return next(
        p.name for p in cluster.scheduler_replicas if address.endswith(f":{p.info['port']}")
    )


def test_a_restarted_aggregator_resumes_from_its_checkpoint(cluster: LocalCluster) -> None:
    # Prepare
    with Client(
        cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
    ) as client:
        spec = DEMO_JOB.with_(min_nodes=3, tasks_per_round=3, target_accuracy=0.0, rounds=25)
        handle = client.submit(spec)
        events = handle.watch()
        for event in events:
            if event.kind is EventKind.ROUND_COMPLETED and event.metrics is not None:
                if event.metrics.round >= 4:
                    break
        # Execute: SIGKILL the aggregator mid-job and start it again on the same port.
        cluster.kill_service("aggregator")
        cluster.restart_service("aggregator")
        reruns = [e.message for e in events if "runs again from model version" in e.message]
        final = handle.get()
        rounds = client.metrics(handle.job_id)
    # Assert: every round completed once in the end; at most one round was run again.
    assert final.state is JobState.SUCCEEDED, final.message
    assert final.rounds_completed == 25 and final.model_version == 25
    assert len(reruns) <= 1, reruns
    assert sorted(m.round for m in rounds) == list(range(25))
