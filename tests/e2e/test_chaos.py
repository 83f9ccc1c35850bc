"""Chaos: workers SIGKILLed at random rounds while jobs train (bounded in count and time)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tessera.cli.app import DEMO_JOB
from tessera.cli.cluster import LocalCluster
from tessera.client import Client, EventKind, JobHandle, JobState
from tests.e2e.scrape import metric_sum

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROUNDS = 60
TASKS = 3
KILLS_PER_JOB = 4
SPEC = DEMO_JOB.with_(
    rounds=ROUNDS, target_accuracy=0.0, min_nodes=2, tasks_per_round=TASKS, name="chaos"
)


def _applied_contributions(cluster: LocalCluster) -> float:
    return metric_sum(cluster, "aggregator", 'tessera_contributions_total{decision="applied"')


class Chaos:
    """Kills a random live worker a few milliseconds into each of ``kills`` randomly chosen
    rounds of a job, and starts a replacement; the cluster never has fewer than two workers
    alive.

    Kills follow the job's rounds, not the clock, so every kill lands while the job runs however
    fast or slow the machine is.
    """

    def __init__(self, cluster: LocalCluster, job: JobHandle, kills: int, seed: int) -> None:
        self._cluster = cluster
        self._job = job
        self._rng = random.Random(seed)
        self._rounds = sorted(self._rng.sample(range(2, ROUNDS - 2), kills))
        self._stop = threading.Event()
        self.killed: list[str] = []
        self._thread = threading.Thread(target=self._run, name="chaos")

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        pending = list(self._rounds)
        for event in self._job.watch():
            if self._stop.is_set() or not pending:
                return
            if event.kind is not EventKind.ROUND_STARTED or event.round < pending[0]:
                continue
            pending.pop(0)
            # Some kills land before the task arrives, some during training or the push.
            if self._stop.wait(self._rng.uniform(0.0, 0.04)):
                return
            alive = [i for i, w in enumerate(self._cluster.workers) if w.process.poll() is None]
            victim = self._rng.choice(alive)
            self._cluster.kill_worker(victim)
            self.killed.append(self._cluster.workers[victim].name)
            self._cluster.add_worker()


def test_random_worker_kills_lose_nothing_and_change_nothing(tmp_path: Path) -> None:
    with LocalCluster(workers=3, heartbeat_interval=0.5, patience=4, log_dir=tmp_path) as cluster:
        with Client(
            cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
        ) as client:
            # Prepare: the undisturbed run.
            calm = client.submit(SPEC).wait()
            # Execute: the same job twice more under random SIGKILLs.
            stormy = []
            kills: list[int] = []
            started = time.monotonic()
            for seed in (1, 2):
                handle = client.submit(SPEC)
                with Chaos(cluster, handle, KILLS_PER_JOB, seed) as chaos:
                    stormy.append(handle.wait())
                kills.append(len(chaos.killed))
            elapsed = time.monotonic() - started
        applied = _applied_contributions(cluster)
    # Assert: every job finished every round; accuracy as undisturbed (to 1 point); each
    # (job, round, task) was applied exactly once.
    assert calm.state is JobState.SUCCEEDED and calm.last_metrics is not None
    for job in stormy:
        assert job.state is JobState.SUCCEEDED, job.message
        assert job.rounds_completed == ROUNDS
        assert job.last_metrics is not None
        assert abs(job.last_metrics.test_accuracy - calm.last_metrics.test_accuracy) <= 0.01
    assert kills == [KILLS_PER_JOB, KILLS_PER_JOB]
    assert applied == 3 * ROUNDS * TASKS
    print(f"chaos: {kills} kills over {elapsed:.1f} s; applied {applied:.0f}")
