"""Training modes on a whole local cluster: diloco, async, a language model, federated data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tessera.cli.cluster import LocalCluster
from tessera.client import Client, EventKind, JobConfig, JobState, RoundMetrics, load_model
from tessera.ml.datasets import load_dataset
from tessera.ml.federated import dirichlet_split
from tests.e2e.scrape import metric_sum

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DIGITS_DILOCO = JobConfig(
    model="mlp",
    dataset="digits",
    hidden_sizes=(128,),
    mode="diloco",
    inner_steps=20,
    inner_learning_rate=0.003,
    batch_size=32,
    min_nodes=2,
    tasks_per_round=2,
    rounds=40,
    target_accuracy=0.93,
)


def _client(cluster: LocalCluster) -> Client:
    return Client(cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token)


def _rounds(client: Client, job_id: str) -> list[RoundMetrics]:
    return [
        event.metrics
        for event in client.watch(job_id)
        if event.kind is EventKind.ROUND_COMPLETED and event.metrics is not None
    ]


def _worker_tasks(cluster: LocalCluster, worker: str) -> float:
    return metric_sum(cluster, worker, "tessera_worker_tasks_total")


def test_diloco_reaches_the_target_and_its_model_loads_back_with_plain_torch(
    tmp_path: Path,
) -> None:
    with LocalCluster(workers=2, log_dir=tmp_path) as cluster, _client(cluster) as client:
        # Execute
        handle = client.submit(DIGITS_DILOCO)
        rounds = _rounds(client, handle.job_id)
        job = handle.get()
        downloaded = handle.download_model(tmp_path / "model.safetensors")
    # Assert: one pseudo-gradient per task per round, each the size of the fp32 parameters
    assert job.state is JobState.SUCCEEDED, job.message
    assert job.last_metrics is not None and job.last_metrics.test_accuracy >= 0.93
    assert job.last_metrics.test_macro_f1 > 0.9
    parameters = (64 * 128 + 128) + (128 * 10 + 10)
    assert {m.payload_bytes for m in rounds} == {2 * 4 * parameters}
    assert [m.model_version for m in rounds] == list(range(1, len(rounds) + 1))
    # The download rebuilds the zoo's model; its accuracy is the reported one.
    model, spec = load_model(downloaded.path)
    digits = load_dataset("digits")
    with torch.no_grad():
        accuracy = float((model(digits.test_x).argmax(1) == digits.test_y).float().mean())
    assert spec.mode == "diloco"
    assert accuracy == pytest.approx(job.last_metrics.test_accuracy, abs=1e-6)


def test_async_applies_every_contribution_as_its_own_version(tmp_path: Path) -> None:
    # Prepare: one slow worker, so contributions arrive out of step
    spec = DIGITS_DILOCO.with_(mode="async", rounds=12, target_accuracy=0.0, learning_rate=0.5)
    with LocalCluster(workers=2, worker_slowdowns=[1.0, 3.0], log_dir=tmp_path) as cluster:
        with _client(cluster) as client:
            # Execute
            handle = client.submit(spec)
            rounds = _rounds(client, handle.job_id)
            job = handle.get()
    # Assert: two versions per round (one per task), nothing rejected as stale
    assert job.state is JobState.SUCCEEDED, job.message
    assert [m.model_version for m in rounds] == [2 * (r + 1) for r in range(12)]
    assert all(m.contributions == 2 for m in rounds)
    assert rounds[-1].test_accuracy > 0.85


def test_language_model_reports_perplexity_and_stops_at_the_target_loss(tmp_path: Path) -> None:
    # Prepare: a tiny byte-level GPT on the standard library's sources
    spec = JobConfig(
        model="gpt",
        dataset="stdlib",
        n_layer=1,
        n_head=2,
        d_model=32,
        context=32,
        batch_size=8,
        mode="diloco",
        inner_steps=10,
        inner_learning_rate=0.01,
        min_nodes=2,
        tasks_per_round=2,
        rounds=30,
        target_loss=3.3,
    )
    with LocalCluster(workers=2, log_dir=tmp_path) as cluster, _client(cluster) as client:
        # Execute
        handle = client.submit(spec)
        rounds = _rounds(client, handle.job_id)
        job = handle.get()
    # Assert
    assert job.state is JobState.SUCCEEDED, job.message
    assert "reached target loss 3.3" in job.message
    assert rounds[-1].test_loss <= 3.3 < rounds[0].test_loss
    assert all(m.test_perplexity == pytest.approx(np.exp(m.test_loss)) for m in rounds)
    assert rounds[-1].test_perplexity < rounds[0].test_perplexity


def test_federated_data_stays_on_the_nodes_that_hold_it(tmp_path: Path) -> None:
    # Prepare: two volunteers each hold a label-skewed part of digits; a third holds nothing
    digits = load_dataset("digits")
    parts = dirichlet_split(digits.train_y, 2, alpha=1.0, seed=5)
    folders = []
    for index, part in enumerate(parts):
        folder = tmp_path / f"data-{index}"
        folder.mkdir()
        x, y = digits.train_x[part].numpy(), digits.train_y[part].numpy()
        np.savez(folder / "digits.npz", x=x, y=y)
        folders.append(folder)
    spec = DIGITS_DILOCO.with_(data_split="local", min_nodes=3, target_accuracy=0.9, rounds=40)
    with LocalCluster(workers=0, log_dir=tmp_path / "logs") as cluster:
        cluster.add_worker(local_data=folders[0])
        cluster.add_worker(local_data=folders[1])
        cluster.add_worker()
        with _client(cluster) as client:
            # Execute
            handle = client.submit(spec)
            job = handle.wait()
            nodes = {n.hostname: n.local_datasets for n in client.list_nodes()}
        # Assert: trained to the target on the holders alone; the third node ran nothing
        assert job.state is JobState.SUCCEEDED, job.message
        assert nodes == {"worker-0": ("digits",), "worker-1": ("digits",), "worker-2": ()}
        assert _worker_tasks(cluster, "worker-2") == 0
        assert _worker_tasks(cluster, "worker-0") + _worker_tasks(cluster, "worker-1") >= 2
