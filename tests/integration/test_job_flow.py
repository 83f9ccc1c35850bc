"""Scheduler and aggregator driven by hand through their real gRPC APIs (a worker's view)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from services.aggregator.ledger import Decision
from services.worker.heartbeat import HeartbeatSender
from tessera.common.etcd import KeySchema
from tessera.ml.datasets import load_dataset
from tessera.ml.training import compute_gradient
from tessera.ml.zoo import ModelSpec, build_model
from tessera.v1 import aggregator_pb2, common_pb2, registry_pb2, scheduler_pb2, scheduler_pb2_grpc
from tessera.wire.frames import encode_tensors, iter_chunks
from tessera.wire.stream import assemble, chunks_after_header, metas_from_specs, specs_from_metas

from .conftest import Cluster

SPEC = common_pb2.JobSpec(
    model="mlp", dataset="digits", rounds=2, min_nodes=1, tasks_per_round=2, batch_size=32
)


@pytest.fixture
def node(services: Cluster) -> Iterator[str]:
    """A registered node whose heartbeats keep it alive for the whole test."""
    profile = common_pb2.NodeProfile(hostname="hand", cpu_cores=1, throughput=100.0)
    response = services.registry.Register(registry_pb2.RegisterRequest(profile=profile), timeout=5)
    request = registry_pb2.HeartbeatRequest(node_id=response.node_id)
    sender = HeartbeatSender(
        lambda: services.registry.Heartbeat(request, timeout=5) and None,
        response.heartbeat_interval_seconds,
        on_lost=lambda: None,
    )
    sender.start()
    yield response.node_id
    sender.stop()


def _fetch(cluster: Cluster, job_id: str, version: int) -> dict[str, torch.Tensor]:
    frames = iter(
        cluster.aggregator.GetModel(
            aggregator_pb2.GetModelRequest(job_id=job_id, version=version), timeout=10
        )
    )
    header = next(frames).header
    metas = metas_from_specs(header.tensors)
    return assemble(metas, chunks_after_header(frames), max_bytes=1 << 30).tensors()


def _gradient(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    data = load_dataset("digits")
    model = build_model("mlp", ModelSpec(64, 10))
    model.load_state_dict(weights)
    grads, _loss = compute_gradient(model, data.train_x[:32], data.train_y[:32])
    return grads


def _push(
    cluster: Cluster,
    task: scheduler_pb2.Task,
    node_id: str,
    tensors: dict[str, torch.Tensor],
    *,
    base_version: int | None = None,
) -> aggregator_pb2.PushReceipt:
    encoded = encode_tensors(tensors)
    header = aggregator_pb2.ContributionHeader(
        job_id=task.job_id,
        round=task.round,
        task_index=task.task_index,
        node_id=node_id,
        base_version=task.model_version if base_version is None else base_version,
        samples=32,
        loss=1.0,
        tensors=specs_from_metas(encoded.metas),
    )

    def frames() -> Iterator[aggregator_pb2.GradientFrame]:
        yield aggregator_pb2.GradientFrame(header=header)
        for chunk in iter_chunks(encoded.payloads):
            yield aggregator_pb2.GradientFrame(chunk=chunk)

    receipt: aggregator_pb2.PushReceipt = cluster.aggregator.PushGradient(frames(), timeout=10)
    return receipt


def _submit_and_stream(cluster: Cluster, node_id: str, spec: common_pb2.JobSpec) -> tuple[str, Any]:
    """Submit ``spec`` and open ``node_id``'s task stream; return the job id and the stream."""
    job_id = cluster.scheduler.SubmitJob(
        scheduler_pb2.SubmitJobRequest(spec=spec), timeout=30
    ).job_id
    stream = cluster.scheduler.StreamTasks(
        scheduler_pb2.StreamTasksRequest(node_id=node_id), timeout=60
    )
    return job_id, stream


def _report(cluster: Cluster, task: scheduler_pb2.Task, node_id: str) -> bool:
    request = scheduler_pb2.ReportTaskRequest(
        node_id=node_id,
        job_id=task.job_id,
        round=task.round,
        task_index=task.task_index,
        outcome=scheduler_pb2.TASK_OUTCOME_SUCCEEDED,
    )
    accepted: bool = cluster.scheduler.ReportTask(request, timeout=5).accepted
    return accepted


def test_a_hand_driven_worker_completes_a_job_with_exactly_once_accounting(
    services: Cluster, node: str, etcd_client: Any
) -> None:
    # Prepare
    node_id = node
    job_id, stream = _submit_and_stream(services, node_id, SPEC)
    receipts: list[int] = []
    # Execute: two rounds of two tasks; every contribution is pushed twice (a retry).
    for _ in range(4):
        task = next(stream)
        weights = _fetch(services, job_id, task.model_version)
        gradient = _gradient(weights)
        receipts.append(_push(services, task, node_id, gradient).status)
        receipts.append(_push(services, task, node_id, gradient).status)
        assert _report(services, task, node_id)
    stream.cancel()
    watch = services.scheduler.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id), timeout=30)
    final = list(watch)[-1].job
    # Assert
    assert (
        receipts
        == [
            aggregator_pb2.RECEIPT_STATUS_ACCEPTED,
            aggregator_pb2.RECEIPT_STATUS_DUPLICATE,
        ]
        * 4
    )
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED
    assert final.rounds_completed == 2
    assert final.model_version == 2
    ledger = services.aggregator_core.ledger.entries(job_id)
    applied = [(e.round, e.task) for e in ledger if e.decision is Decision.APPLIED]
    assert sorted(applied) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sum(e.decision is Decision.DUPLICATE for e in ledger) == 4
    keys = KeySchema(services.etcd_prefix)
    raw, _ = etcd_client.get(keys.job(job_id))
    assert b"JOB_STATE_SUCCEEDED" in raw
    records = {
        meta.key.decode(): json.loads(value)
        for value, meta in etcd_client.get_prefix(keys.tasks(job_id))
    }
    done = {"state": "done", "node": node_id, "placed_on": [node_id]}
    assert records == {keys.task(job_id, r, t): done for r in (0, 1) for t in (0, 1)}


def test_bad_contributions_are_rejected_with_reasons_and_never_applied(
    services: Cluster, node: str
) -> None:
    node_id = node
    job_id, stream = _submit_and_stream(services, node_id, SPEC)
    task = next(stream)
    gradient = _gradient(_fetch(services, job_id, 0))
    bad_shape = dict(gradient, **{"1.weight": torch.zeros(3, 3)})
    non_finite = {k: v.clone() for k, v in gradient.items()}
    non_finite["1.bias"][0] = float("nan")
    missing = {k: v for k, v in gradient.items() if k != "1.bias"}
    cases = {
        "shape": _push(services, task, node_id, bad_shape),
        "nan": _push(services, task, node_id, non_finite),
        "missing": _push(services, task, node_id, missing),
        "stale": _push(services, task, node_id, gradient, base_version=7),
    }
    stream.cancel()
    assert {k: r.status for k, r in cases.items()} == dict.fromkeys(
        cases, aggregator_pb2.RECEIPT_STATUS_REJECTED
    )
    assert "tensor '1.weight' is torch.float32 (3, 3)" in cases["shape"].reason
    assert "non-finite" in cases["nan"].reason
    assert "missing ['1.bias']" in cases["missing"].reason
    assert "base version 7" in cases["stale"].reason
    entries = services.aggregator_core.ledger.entries(job_id)
    assert [e.decision for e in entries] == [Decision.REJECTED] * 4
    assert _push(services, task, node_id, gradient).status == aggregator_pb2.RECEIPT_STATUS_ACCEPTED


def test_malformed_gradient_streams_get_invalid_argument(services: Cluster) -> None:
    job_id = services.scheduler.SubmitJob(
        scheduler_pb2.SubmitJobRequest(spec=SPEC), timeout=30
    ).job_id
    with pytest.raises(grpc.RpcError) as no_header:
        services.aggregator.PushGradient(
            iter([aggregator_pb2.GradientFrame(chunk=b"abc")]), timeout=5
        )
    assert no_header.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "starts with a ContributionHeader" in str(no_header.value.details())
    spec = aggregator_pb2.ContributionHeader(job_id=job_id, node_id="n", samples=1)
    spec.tensors.add(name="0.weight", dtype="complex64", shape=[1], codec=1, byte_length=8)
    with pytest.raises(grpc.RpcError) as bad_dtype:
        services.aggregator.PushGradient(
            iter([aggregator_pb2.GradientFrame(header=spec)]), timeout=5
        )
    assert bad_dtype.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "complex64" in str(bad_dtype.value.details())


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (common_pb2.JobSpec(model="resnet9000"), "unknown model 'resnet9000'"),
        (common_pb2.JobSpec(dataset="imagenet"), "unknown dataset 'imagenet'"),
        (common_pb2.JobSpec(optimizer="lion"), "unknown optimizer 'lion'"),
        (common_pb2.JobSpec(aggregation="vote"), "unknown aggregation rule 'vote'"),
        (common_pb2.JobSpec(policy="psychic"), "unknown scheduling policy 'psychic'"),
        (common_pb2.JobSpec(learning_rate=-0.5), "learning_rate (-0.5) must be > 0"),
        (common_pb2.JobSpec(hidden_sizes=[0]), "hidden size (0) must be in [1, 65536]"),
        (
            common_pb2.JobSpec(aggregation="krum", tasks_per_round=4),
            "aggregation 'krum' with f=1 needs tasks_per_round >= 2f + 3 = 5, got 4",
        ),
        (
            common_pb2.JobSpec(aggregation="trimmed_mean", min_nodes=2),
            "aggregation 'trimmed_mean' with f=1 trims f from each side, so it needs "
            "tasks_per_round >= 2f + 1 = 3, got 2",
        ),
    ],
)
def test_bad_job_specs_get_invalid_argument_naming_the_field(
    services: Cluster, spec: common_pb2.JobSpec, fragment: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        services.scheduler.SubmitJob(scheduler_pb2.SubmitJobRequest(spec=spec), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in str(info.value.details())
    listed = services.scheduler.ListJobs(scheduler_pb2.ListJobsRequest(), timeout=5).jobs
    assert list(listed) == []


def test_unknown_jobs_and_nodes_get_not_found(services: Cluster) -> None:
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: services.scheduler.GetJob(
            scheduler_pb2.GetJobRequest(job_id="nope"), timeout=5
        ),
        "cancel": lambda: services.scheduler.CancelJob(
            scheduler_pb2.CancelJobRequest(job_id="nope"), timeout=5
        ),
        "watch": lambda: list(
            services.scheduler.WatchJob(scheduler_pb2.WatchJobRequest(job_id="nope"), timeout=5)
        ),
        "report": lambda: services.scheduler.ReportTask(
            scheduler_pb2.ReportTaskRequest(job_id="nope", node_id="n"), timeout=5
        ),
        "stream": lambda: list(
            services.scheduler.StreamTasks(
                scheduler_pb2.StreamTasksRequest(node_id="ghost"), timeout=5
            )
        ),
        "model": lambda: list(
            services.aggregator.GetModel(aggregator_pb2.GetModelRequest(job_id="nope"), timeout=5)
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, name
        details = str(info.value.details())
        assert "'nope'" in details or "'ghost'" in details, (name, details)


def test_cancel_stops_a_job_waiting_for_nodes(services: Cluster) -> None:
    spec = common_pb2.JobSpec(min_nodes=5)
    job_id = services.scheduler.SubmitJob(
        scheduler_pb2.SubmitJobRequest(spec=spec), timeout=30
    ).job_id
    events = services.scheduler.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id), timeout=30)
    waiting = threading.Event()
    for event in events:
        if event.kind == scheduler_pb2.JOB_EVENT_KIND_WAITING or "waiting" in event.job.message:
            waiting.set()
            break
    assert waiting.is_set()
    job = services.scheduler.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job_id), timeout=30)
    assert job.state == common_pb2.JOB_STATE_CANCELLED


def test_a_task_no_node_can_take_waits_and_watch_says_why(services: Cluster, node: str) -> None:
    spec = common_pb2.JobSpec(min_nodes=1, min_gpu_memory_bytes=8 * 2**30)
    job_id = services.scheduler.SubmitJob(
        scheduler_pb2.SubmitJobRequest(spec=spec), timeout=30
    ).job_id
    events = services.scheduler.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id), timeout=30)
    reason = ""
    for event in events:
        # Either a WAITING event, or the snapshot of a job that already waits.
        text = event.message or event.job.message
        if "wait for a node" in text:
            reason = text
            break
    assert "no node with >= 8.0 GiB GPU memory" in reason
    job = services.scheduler.CancelJob(scheduler_pb2.CancelJobRequest(job_id=job_id), timeout=30)
    assert job.state == common_pb2.JOB_STATE_CANCELLED


def test_rpcs_beyond_the_concurrency_cap_get_resource_exhausted(
    registry_config: Any, etcd_server: Any
) -> None:
    import dataclasses

    from services.aggregator.config import AggregatorConfig
    from services.aggregator.server import create_aggregator_server
    from services.scheduler.config import SchedulerConfig
    from services.scheduler.server import create_scheduler_server

    from .conftest import LOOPBACK

    agg_server, agg_port, _, _ = create_aggregator_server(AggregatorConfig(common=LOOPBACK))
    common = dataclasses.replace(LOOPBACK, max_concurrent_rpcs=2)
    scheduler = create_scheduler_server(
        SchedulerConfig(
            common=common,
            etcd=etcd_server.endpoint,
            etcd_prefix=registry_config.etcd_prefix,
            aggregator=f"127.0.0.1:{agg_port}",
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{scheduler.port}")
    stub = scheduler_pb2_grpc.SchedulerStub(channel)
    try:
        deadline = time.monotonic() + 30
        while not scheduler.core.leading:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        job_id = stub.SubmitJob(
            scheduler_pb2.SubmitJobRequest(spec=common_pb2.JobSpec(min_nodes=9)), timeout=30
        ).job_id
        # Two open watches hold both slots (each waits for nodes that never come).
        watches: list[Any] = [
            stub.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id), timeout=30)
            for _ in range(2)
        ]
        for watch in watches:
            next(watch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ListJobs(scheduler_pb2.ListJobsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for watch in watches:
            watch.cancel()
    finally:
        channel.close()
        scheduler.stop(grace=0)
        agg_server.stop(0).wait()


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_round_closes_as_its_last_contribution_lands_and_counts_once(
    services: Cluster, node: str
) -> None:
    # Prepare: a job of two tasks per round; both tasks of round 0 in hand.
    spec = common_pb2.JobSpec()
    spec.CopyFrom(SPEC)
    spec.rounds = 1
    job_id, stream = _submit_and_stream(services, node, spec)
    tasks = [next(stream), next(stream)]
    gradient = _gradient(_fetch(services, job_id, 0))
    job = services.aggregator_core.job(job_id)
    # Execute: push both contributions; report neither yet.
    first = [_push(services, task, node, gradient).status for task in tasks]
    closed_early = _wait_for(lambda: job.version == 1)
    late = _push(services, tasks[0], node, gradient)
    for task in tasks:
        assert _report(services, task, node)
    watch = services.scheduler.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id), timeout=30)
    events = list(watch)
    stream.cancel()
    # Assert: version 1 was published before any report; the late push is a duplicate (not
    # stale); the scheduler's CloseRound got that same round, and its bytes count once.
    assert first == [aggregator_pb2.RECEIPT_STATUS_ACCEPTED] * 2
    assert closed_early
    assert late.status == aggregator_pb2.RECEIPT_STATUS_DUPLICATE
    # (The job may have finished before the watch began: its last event is then the snapshot.)
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED and final.model_version == 1
    assert final.rounds_completed == 1 and final.last_metrics.contributions == 2
    counted = REGISTRY.get_sample_value("tessera_job_payload_bytes_total", {"job": job_id})
    assert counted == final.last_metrics.payload_bytes > 0


def _inline_weights(task: scheduler_pb2.Task) -> dict[str, torch.Tensor]:
    metas = metas_from_specs(task.model_tensors)
    return assemble(metas, [task.model_payload], max_bytes=1 << 30).tensors()


@pytest.mark.parametrize(("hidden", "inline"), [([], True), ([300, 300], False)])
def test_a_small_model_rides_along_with_its_tasks(
    services: Cluster, node: str, hidden: list[int], inline: bool
) -> None:
    # Prepare: two rounds of one task; the default MLP (hidden 128) is 38 KB, the 300x300 one
    # 0.4 MB (over the 256 KiB limit).
    spec = common_pb2.JobSpec()
    spec.CopyFrom(SPEC)
    spec.tasks_per_round = 1
    spec.hidden_sizes.extend(hidden)
    job_id, stream = _submit_and_stream(services, node, spec)
    # Execute: run round 0 by hand, take round 1's task.
    first = next(stream)
    zeros = {k: torch.zeros_like(v) for k, v in _fetch(services, job_id, 0).items()}
    assert _push(services, first, node, zeros).status == aggregator_pb2.RECEIPT_STATUS_ACCEPTED
    assert _report(services, first, node)
    second = next(stream)
    stream.cancel()
    # Assert: round 0 had nothing to send along; round 1 carries version 1 exactly as GetModel
    # streams it, when small.
    assert not first.model_payload and second.model_version == 1
    if inline:
        fetched = _fetch(services, job_id, 1)
        carried = _inline_weights(second)
        assert carried.keys() == fetched.keys()
        assert all(torch.equal(carried[k], fetched[k]) for k in fetched)
    else:
        assert not second.model_payload and not second.model_tensors
