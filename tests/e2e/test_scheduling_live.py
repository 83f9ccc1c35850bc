"""Policies on a live cluster of workers with deliberately different speeds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.cli.cluster import LocalCluster
from tessera.client import Client, JobConfig, JobState
from tests.e2e.scrape import metric_sum

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

# Two fast nodes and two slow ones (compute stretched 4x and 10x). Eight equal tasks per round:
# round robin gives every node two; a policy that uses the measured speeds gives the fast nodes
# most of the work (workers measure their throughput at start-up, slowdown included, and the
# scheduler refines it from observed task durations).
SLOWDOWNS = [1.0, 1.0, 4.0, 10.0]
ROUNDS = 16
SPEC = JobConfig(
    rounds=ROUNDS,
    min_nodes=4,
    tasks_per_round=8,
    batch_size=0,
    hidden_sizes=(512, 512),
    learning_rate=0.01,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    log_dir: Path = tmp_path_factory.mktemp("scheduling")
    with LocalCluster(workers=4, worker_slowdowns=SLOWDOWNS, log_dir=log_dir) as c:
        yield c


def _tasks_by_worker(cluster: LocalCluster) -> list[float]:
    """Tasks each worker has finished so far (its Prometheus counter)."""
    return [
        metric_sum(cluster, f"worker-{index}", "tessera_worker_tasks_total")
        for index in range(len(SLOWDOWNS))
    ]


def _share_of_fast_nodes(cluster: LocalCluster, policy: str) -> float:
    """Run the job with ``policy``; the fraction of its tasks the fast nodes finished."""
    before = _tasks_by_worker(cluster)
    with Client(
        cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
    ) as client:
        job = client.submit(SPEC.with_(policy=policy, name=policy)).wait()
        assert job.state is JobState.SUCCEEDED, job.message
    done = [a - b for a, b in zip(_tasks_by_worker(cluster), before, strict=True)]
    assert sum(done) == ROUNDS * SPEC.tasks_per_round, done
    fast = [i for i, slowdown in enumerate(SLOWDOWNS) if slowdown == 1.0]
    return sum(done[i] for i in fast) / sum(done)


def test_speed_aware_policies_give_the_fast_nodes_most_of_the_work(
    cluster: LocalCluster,
) -> None:
    # Execute
    shares = {p: _share_of_fast_nodes(cluster, p) for p in ("round_robin", "min_min", "genetic")}
    # Assert: round robin splits the tasks evenly (half go to the two fast nodes); the policies
    # that use measured speeds load the fast nodes with most of them. Task counts, unlike wall
    # times, do not depend on how busy the machine is. That genetic never plans worse than
    # greedy is a property of the plans (tests/unit/scheduler).
    assert shares["round_robin"] == pytest.approx(0.5), shares
    assert shares["min_min"] >= 0.7, shares
    assert shares["genetic"] >= 0.7, shares
