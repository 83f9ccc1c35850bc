"""The data plane through real gRPC: a worker's push and download paths against an aggregator.

Each test starts an aggregator server on 127.0.0.1:0 in-process and drives the worker agent's
own ``_fetch_model`` and ``_push`` (with the job's codec and error feedback) against it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from services.aggregator.config import AggregatorConfig
from services.aggregator.handlers import Aggregator
from services.aggregator.ledger import Decision
from services.aggregator.server import create_aggregator_server
from services.aggregator.servicer import SERVICE, AggregatorServicer, aggregator_handlers
from services.worker.agent import WorkerAgent
from services.worker.config import WorkerConfig
from tessera.ml import zoo
from tessera.v1 import aggregator_pb2, aggregator_pb2_grpc, common_pb2, scheduler_pb2, tensor_pb2
from tessera.wire.codecs import get_codec
from tessera.wire.frames import encode_tensors
from tessera.wire.stream import specs_from_metas

from .conftest import LOOPBACK


@dataclass
class Server:
    address: str
    stub: aggregator_pb2_grpc.AggregatorStub
    core: Aggregator


def _start(max_payload_bytes: int = 2 * 1024**3) -> Iterator[Server]:
    config = AggregatorConfig(common=LOOPBACK, max_payload_bytes=max_payload_bytes)
    server, port, _health, core = create_aggregator_server(config)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield Server(f"127.0.0.1:{port}", aggregator_pb2_grpc.AggregatorStub(channel), core)
    channel.close()
    server.stop(0).wait()


@pytest.fixture
def aggregator() -> Iterator[Server]:
    torch.set_num_threads(1)
    yield from _start()


@pytest.fixture
def agent() -> WorkerAgent:
    # The registry and scheduler are never called: only the aggregator paths are exercised.
    worker = WorkerAgent(
        WorkerConfig(common=LOOPBACK, registry="127.0.0.1:9", scheduler="127.0.0.1:9")
    )
    worker.node_id = "transport-test"
    return worker


def _spec(hidden_sizes: list[int], codec: str = "none", **fields: object) -> common_pb2.JobSpec:
    """A one-task job spec with the defaults the scheduler would fill in."""
    spec = common_pb2.JobSpec(
        model="mlp",
        dataset="digits",
        hidden_sizes=hidden_sizes,
        tasks_per_round=1,
        optimizer="sgd",
        learning_rate=0.01,
        codec=codec,
    )
    for name, value in fields.items():
        setattr(spec, name, value)
    return spec


def _counter(name: str, codec: str) -> float:
    return REGISTRY.get_sample_value(name, {"codec": codec}) or 0.0


def _open(server: Server, job_id: str, spec: common_pb2.JobSpec) -> None:
    server.stub.OpenJob(aggregator_pb2.OpenJobRequest(job_id=job_id, spec=spec), timeout=120)


def _task(
    server: Server, job_id: str, spec: common_pb2.JobSpec, round_index: int
) -> scheduler_pb2.Task:
    return scheduler_pb2.Task(
        job_id=job_id,
        round=round_index,
        task_index=0,
        num_tasks=1,
        model_version=round_index,
        spec=spec,
        aggregator_address=server.address,
    )


def _close(server: Server, job_id: str, round_index: int) -> None:
    server.stub.CloseRound(
        aggregator_pb2.CloseRoundRequest(job_id=job_id, round=round_index, num_tasks=1),
        timeout=120,
    )


@pytest.mark.slow
def test_a_model_and_a_gradient_over_200_mb_travel_through_1_mib_messages(
    aggregator: Server, agent: WorkerAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 64 -> 5000 -> 10500 -> 10 is 52.9 M float32 parameters, 212 MB; the zoo's
    # cap on parameters is raised for this test only.
    monkeypatch.setattr(zoo, "MAX_PARAMETERS", 60_000_000)
    spec = _spec([5000, 10500])
    _open(aggregator, "big", spec)
    task = _task(aggregator, "big", spec, 0)
    link = agent._aggregator(aggregator.address)  # noqa: SLF001 - the worker's own paths
    sent_before = _counter("tessera_worker_bytes_sent_total", "none")
    received_before = _counter("tessera_bytes_received_total", "none")
    # Execute: download version 0, push a gradient of the same size, close the round.
    weights = agent._fetch_model(link, task)[1]  # noqa: SLF001
    payload = sum(t.numel() * t.element_size() for t in weights.values())
    gradient = {name: torch.full_like(tensor, 0.5) for name, tensor in weights.items()}
    receipt = agent._push(link, task, task.model_version, gradient, 32, 1.0)  # noqa: SLF001
    _close(aggregator, "big", 0)
    # Assert
    assert payload > 200 * 10**6
    _, published = aggregator.core.job("big").snapshot(0)
    assert receipt.status == aggregator_pb2.RECEIPT_STATUS_ACCEPTED
    assert receipt.bytes_received == payload
    assert _counter("tessera_worker_bytes_sent_total", "none") - sent_before == payload
    assert _counter("tessera_bytes_received_total", "none") - received_before == payload
    for name, before in weights.items():
        # SGD's first step moves every weight by learning_rate * gradient.
        assert torch.allclose(before - published[name], torch.full_like(before, 0.005), atol=1e-6)


@pytest.fixture
def small_limit() -> Iterator[Server]:
    yield from _start(max_payload_bytes=3000)


def test_a_job_whose_gradients_cannot_fit_the_limit_is_refused_when_opened(
    small_limit: Server,
) -> None:
    # mlp [16] on digits has 1210 float32 parameters: 4840 bytes > 3000.
    with pytest.raises(grpc.RpcError) as info:
        _open(small_limit, "big", _spec([16]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4840 bytes of parameters" in str(info.value.details())
    assert "at most 3000 bytes (--max-payload-bytes)" in str(info.value.details())


def test_a_table_over_the_limit_is_refused_before_its_payload_is_read(
    small_limit: Server,
) -> None:
    # Prepare: mlp [8] (2440 bytes) fits, but a top-k table may declare up to 8 bytes per
    # entry: 4096 for the 512 entries of 1.weight.
    _open(small_limit, "small", _spec([8]))
    _, weights = small_limit.core.job("small").snapshot(0)
    encoded = encode_tensors({k: v for k, v in weights.items()})
    specs = specs_from_metas(encoded.metas)
    specs[0].codec = tensor_pb2.CODEC_TOPK
    specs[0].byte_length = 8 * 512
    header = aggregator_pb2.ContributionHeader(
        job_id="small", node_id="n", samples=1, tensors=specs
    )
    # Execute
    with pytest.raises(grpc.RpcError) as info:
        small_limit.stub.PushGradient(
            iter([aggregator_pb2.GradientFrame(header=header)]), timeout=5
        )
    # Assert
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds the limit of 3000 bytes" in str(info.value.details())
    entries = small_limit.core.ledger.entries("small")
    assert [(e.decision, e.kind) for e in entries] == [(Decision.REJECTED, "too_large")]


def test_a_non_finite_value_stops_the_stream_early_and_is_counted_by_kind(
    aggregator: Server, agent: WorkerAgent
) -> None:
    # Prepare: a 37 MB gradient whose first chunk holds a NaN.
    spec = _spec(hidden_sizes=[3000, 3000])
    _open(aggregator, "nan", spec)
    link = agent._aggregator(aggregator.address)  # noqa: SLF001
    task = _task(aggregator, "nan", spec, 0)
    gradient = {k: torch.zeros_like(v) for k, v in agent._fetch_model(link, task)[1].items()}  # noqa: SLF001
    gradient["1.weight"][0, 0] = float("nan")
    payload = sum(t.numel() * 4 for t in gradient.values())
    sent_before = _counter("tessera_worker_bytes_sent_total", "none")
    received_before = _counter("tessera_bytes_received_total", "none")
    rejected = REGISTRY.get_sample_value(
        "tessera_contributions_total", {"decision": "rejected", "reason": "non_finite"}
    )
    # Execute
    receipt = agent._push(link, task, task.model_version, gradient, 1, 1.0)  # noqa: SLF001
    # Assert
    assert receipt.status == aggregator_pb2.RECEIPT_STATUS_REJECTED
    assert "tensor '1.weight' has non-finite values" in receipt.reason
    received = _counter("tessera_bytes_received_total", "none") - received_before
    sent = _counter("tessera_worker_bytes_sent_total", "none") - sent_before
    assert received == 1 << 20  # the aggregator read one chunk
    assert received <= sent < payload  # the worker stopped sending
    after = REGISTRY.get_sample_value(
        "tessera_contributions_total", {"decision": "rejected", "reason": "non_finite"}
    )
    assert (after or 0.0) - (rejected or 0.0) == 1


def test_encoded_bytes_are_counted_under_the_codec_that_produced_them(
    aggregator: Server, agent: WorkerAgent
) -> None:
    spec = _spec(hidden_sizes=[64], codec="fp16")
    _open(aggregator, "half", spec)
    link = agent._aggregator(aggregator.address)  # noqa: SLF001
    task = _task(aggregator, "half", spec, 0)
    gradient = {k: torch.ones_like(v) for k, v in agent._fetch_model(link, task)[1].items()}  # noqa: SLF001
    raw = sum(t.numel() * 4 for t in gradient.values())
    sent_before = _counter("tessera_worker_bytes_sent_total", "fp16")
    received_before = _counter("tessera_bytes_received_total", "fp16")
    receipt = agent._push(link, task, task.model_version, gradient, 1, 1.0)  # noqa: SLF001
    assert receipt.status == aggregator_pb2.RECEIPT_STATUS_ACCEPTED
    assert receipt.bytes_received == raw // 2
    assert _counter("tessera_worker_bytes_sent_total", "fp16") - sent_before == raw // 2
    assert _counter("tessera_bytes_received_total", "fp16") - received_before == raw // 2


def test_top_k_error_feedback_carries_what_was_dropped_into_the_next_rounds(
    aggregator: Server, agent: WorkerAgent
) -> None:
    # Prepare
    learning_rate = 0.5
    spec = _spec([16], "topk", learning_rate=learning_rate)
    _open(aggregator, "topk", spec)
    link = agent._aggregator(aggregator.address)  # noqa: SLF001
    generator = torch.Generator().manual_seed(2)
    gradients = []
    weights = [agent._fetch_model(link, _task(aggregator, "topk", spec, 0))[1]]  # noqa: SLF001
    # Execute: three rounds, each pushing a gradient through the job's error feedback.
    for round_index in range(3):
        task = _task(aggregator, "topk", spec, round_index)
        gradient = {k: torch.randn(v.shape, generator=generator) for k, v in weights[0].items()}
        stale = _task(aggregator, "topk", spec, round_index)
        stale.model_version = round_index + 7
        refused = agent._push(link, stale, stale.model_version, gradient, 1, 1.0)  # noqa: SLF001
        assert refused.status == aggregator_pb2.RECEIPT_STATUS_REJECTED
        receipt = agent._push(link, task, task.model_version, gradient, 1, 1.0)  # noqa: SLF001
        assert receipt.status == aggregator_pb2.RECEIPT_STATUS_ACCEPTED
        gradients.append(gradient)
        _close(aggregator, "topk", round_index)
        weights.append(
            agent._fetch_model(link, _task(aggregator, "topk", spec, round_index + 1))[1]
        )  # noqa: SLF001
    # Assert: SGD with momentum 0.9 applied buffers b_r = 0.9 b_(r-1) + d_r, and moved the
    # weights by learning_rate * b_r, so the decoded contributions d_r can be read back. With
    # feedback, what arrived plus what is still held equals everything computed (EF-SGD);
    # the refused pushes changed nothing.
    feedback = agent._feedback["topk"]  # noqa: SLF001
    previous = {k: torch.zeros_like(v) for k, v in weights[0].items()}
    arrived = {k: torch.zeros_like(v) for k, v in weights[0].items()}
    for before, after in zip(weights, weights[1:], strict=False):
        for name in arrived:
            buffer = (before[name] - after[name]) / learning_rate
            arrived[name] += buffer - 0.9 * previous[name]
            previous[name] = buffer
    topk = get_codec("topk")
    for name, tensor in weights[0].items():
        residual = feedback.residual(name)
        assert residual is not None
        computed = torch.stack([g[name] for g in gradients]).sum(dim=0)
        assert torch.allclose(arrived[name] + residual, computed, atol=1e-4), name
        # Without feedback only the top 1% of each round's entries would have arrived.
        shape = tuple(tensor.shape)
        once = torch.stack(
            [topk.decode(topk.encode(g[name]), torch.float32, shape) for g in gradients]
        ).sum(dim=0)
        assert not torch.allclose(arrived[name], once, atol=1e-3)


def _two_jobs_and_a_gradient(
    aggregator: Server, agent: WorkerAgent, spec: common_pb2.JobSpec, jobs: tuple[str, str]
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Open ``jobs`` with ``spec``; the worker's link and a random gradient of the model."""
    for job_id in jobs:
        _open(aggregator, job_id, spec)
    link = agent._aggregator(aggregator.address)  # noqa: SLF001
    weights = agent._fetch_model(link, _task(aggregator, jobs[0], spec, 0))[1]  # noqa: SLF001
    generator = torch.Generator().manual_seed(5)
    return link, {k: torch.randn(v.shape, generator=generator) for k, v in weights.items()}


def _protobuf_push(
    aggregator: Server, job_id: str, gradient: dict[str, torch.Tensor], chunk_bytes: int
) -> aggregator_pb2.PushReceipt:
    """Push ``gradient`` as a stream of frames built with the generated protobuf classes."""
    encoded = encode_tensors(gradient)
    header = aggregator_pb2.ContributionHeader(
        job_id=job_id, node_id="n", samples=1, tensors=specs_from_metas(encoded.metas)
    )
    frames = [aggregator_pb2.GradientFrame(header=header)]
    frames += [
        aggregator_pb2.GradientFrame(chunk=bytes(p)[i : i + chunk_bytes])
        for p in encoded.payloads
        for i in range(0, p.nbytes, chunk_bytes)
    ]
    receipt: aggregator_pb2.PushReceipt = aggregator.stub.PushGradient(iter(frames), timeout=30)
    return receipt


def _same_model(aggregator: Server, jobs: tuple[str, str]) -> bool:
    for job_id in jobs:
        _close(aggregator, job_id, 0)
    _, first = aggregator.core.job(jobs[0]).snapshot(0)
    _, second = aggregator.core.job(jobs[1]).snapshot(0)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _served(method: str) -> float:
    labels = {"method": f"/tessera.v1.Aggregator/{method}", "code": "OK"}
    return REGISTRY.get_sample_value("tessera_rpcs_total", labels) or 0.0


def test_raw_frames_from_the_worker_and_protobuf_frames_reach_the_same_model(
    aggregator: Server, agent: WorkerAgent
) -> None:
    # Prepare: two jobs with the same spec (a 1.5 MB gradient: two chunks), one fed by the
    # worker's raw frames and one by frames built with the generated protobuf classes.
    jobs = ("raw", "proto")
    spec = _spec(hidden_sizes=[1000, 300], optimizer="sgd")
    link, gradient = _two_jobs_and_a_gradient(aggregator, agent, spec, jobs)
    streams_before = _served("PushGradient")
    # Execute
    raw = agent._push(link, _task(aggregator, "raw", spec, 0), 0, gradient, 1, 1.0)  # noqa: SLF001
    proto = _protobuf_push(aggregator, "proto", gradient, 100_000)
    # Assert
    assert _served("PushGradient") - streams_before == 2
    assert raw.status == proto.status == aggregator_pb2.RECEIPT_STATUS_ACCEPTED
    assert _same_model(aggregator, jobs)


def test_a_gradient_of_one_chunk_goes_in_one_message_and_reaches_the_model_a_stream_does(
    aggregator: Server, agent: WorkerAgent
) -> None:
    # Prepare: two jobs with the same small spec (a 38 KB gradient), one fed by the worker and
    # one by a PushGradient stream of the same gradient.
    jobs = ("small", "stream")
    spec = _spec(hidden_sizes=[128], optimizer="sgd")
    link, gradient = _two_jobs_and_a_gradient(aggregator, agent, spec, jobs)
    small_before, streams_before = _served("PushSmallGradient"), _served("PushGradient")
    # Execute: the worker's push, then the same task again.
    task = _task(aggregator, "small", spec, 0)
    first = agent._push(link, task, 0, gradient, 1, 1.0)  # noqa: SLF001
    again = agent._push(link, task, 0, gradient, 1, 1.0)  # noqa: SLF001
    streamed = _protobuf_push(aggregator, "stream", gradient, 1 << 20)
    # Assert: the worker used the one-message RPC, with the stream's receipts and model.
    assert _served("PushSmallGradient") - small_before == 2
    assert _served("PushGradient") - streams_before == 1
    assert first.status == streamed.status == aggregator_pb2.RECEIPT_STATUS_ACCEPTED
    assert again.status == aggregator_pb2.RECEIPT_STATUS_DUPLICATE
    assert (
        first.bytes_received
        == streamed.bytes_received
        == 4 * sum(t.numel() for t in gradient.values())
    )
    assert _same_model(aggregator, jobs)


@pytest.fixture
def older_aggregator() -> Iterator[Server]:
    """An aggregator server as served before ``PushSmallGradient`` existed."""
    core = Aggregator(max_payload_bytes=2 * 1024**3)
    handlers = aggregator_handlers(AggregatorServicer(core))
    del handlers["PushSmallGradient"]
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield Server(f"127.0.0.1:{port}", aggregator_pb2_grpc.AggregatorStub(channel), core)
    channel.close()
    server.stop(0).wait()
    core.close()


def test_a_worker_streams_to_an_aggregator_without_the_one_message_push(
    older_aggregator: Server, agent: WorkerAgent
) -> None:
    spec = _spec(hidden_sizes=[16], tasks_per_round=2)
    _open(older_aggregator, "old", spec)
    link = agent._aggregator(older_aggregator.address)  # noqa: SLF001
    task = _task(older_aggregator, "old", spec, 0)
    weights = agent._fetch_model(link, task)[1]  # noqa: SLF001
    gradient = {k: torch.ones_like(v) for k, v in weights.items()}
    receipts = [
        agent._push(link, task, 0, gradient, 1, 1.0),  # noqa: SLF001
        agent._push(link, task, 0, gradient, 1, 1.0),  # noqa: SLF001
    ]
    assert [r.status for r in receipts] == [
        aggregator_pb2.RECEIPT_STATUS_ACCEPTED,
        aggregator_pb2.RECEIPT_STATUS_DUPLICATE,
    ]
    assert link.takes_small_pushes is False
    applied = [
        e for e in older_aggregator.core.ledger.entries("old") if e.decision is Decision.APPLIED
    ]
    assert len(applied) == 1


def test_malformed_one_message_gradients_get_invalid_argument(aggregator: Server) -> None:
    spec = _spec(hidden_sizes=[4])
    _open(aggregator, "bad", spec)
    gradient = {
        name: torch.zeros(p.shape)
        for name, p in zoo.build_model("mlp", zoo.ModelSpec(64, 10, (4,))).state_dict().items()
    }
    encoded = encode_tensors(gradient)
    header = aggregator_pb2.ContributionHeader(
        job_id="bad", node_id="n", samples=1, tensors=specs_from_metas(encoded.metas)
    )
    payload = b"".join(encoded.payloads)
    cases = {
        "no header": aggregator_pb2.SmallGradient(payload=payload),
        "short": aggregator_pb2.SmallGradient(header=header, payload=payload[:-4]),
        "long": aggregator_pb2.SmallGradient(header=header, payload=payload + b"\0" * 4),
    }
    errors = {}
    for case, request in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            aggregator.stub.PushSmallGradient(request, timeout=5)
        errors[case] = (caught.value.code(), str(caught.value.details()))
    assert {case: code for case, (code, _) in errors.items()} == dict.fromkeys(
        cases, grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "carries a ContributionHeader" in errors["no header"][1]
    assert f"after {len(payload) - 4} of {len(payload)} payload bytes" in errors["short"][1]
    assert all(e.decision is not Decision.APPLIED for e in aggregator.core.ledger.entries("bad"))


def test_concurrent_pushes_count_each_task_exactly_once_into_the_exact_mean(
    aggregator: Server, agent: WorkerAgent
) -> None:
    # Prepare: a 4.3 MB model (5 chunks per push), six tasks, each pushed twice at once.
    tasks, learning_rate = 6, 0.5
    spec = _spec([1000, 1000], learning_rate=learning_rate, tasks_per_round=tasks)
    _open(aggregator, "many", spec)
    link = agent._aggregator(aggregator.address)  # noqa: SLF001
    weights = agent._fetch_model(link, _task(aggregator, "many", spec, 0))[1]  # noqa: SLF001
    generator = torch.Generator().manual_seed(9)
    gradients = [
        {k: torch.randn(v.shape, generator=generator) for k, v in weights.items()}
        for _ in range(tasks)
    ]
    samples = [1 + 7 * task for task in range(tasks)]
    later = 2 * (tasks - 1)
    start = threading.Barrier(later)
    receipts: list[int] = []

    def push(task: int, barrier: threading.Barrier | None) -> None:
        order = _task(aggregator, "many", spec, 0)
        order.task_index = task
        if barrier is not None:
            barrier.wait(timeout=30)
        receipt = agent._push(link, order, order.model_version, gradients[task], samples[task], 1.0)  # noqa: SLF001
        receipts.append(receipt.status)

    # Execute: task 0 makes the round's sum; then the others race, one of them folding ahead
    # in the lane while the rest are received whole and folded (or deferred) when accepted.
    push(0, None)
    push(0, None)
    threads = [
        threading.Thread(target=push, args=(1 + t % (tasks - 1), start)) for t in range(later)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    aggregator.stub.CloseRound(
        aggregator_pb2.CloseRoundRequest(job_id="many", round=0, num_tasks=tasks), timeout=60
    )
    _, after = aggregator.core.job("many").snapshot(0)
    # Assert: one ACCEPTED and one DUPLICATE per task, and SGD's first step moved the weights
    # by learning_rate times the sample-weighted mean.
    assert sorted(receipts) == sorted(
        [aggregator_pb2.RECEIPT_STATUS_ACCEPTED, aggregator_pb2.RECEIPT_STATUS_DUPLICATE] * tasks
    )
    total = sum(samples)
    for name, before in weights.items():
        weighted = [g[name].double() * s for g, s in zip(gradients, samples, strict=True)]
        mean = torch.stack(weighted).sum(dim=0) / total
        assert torch.allclose((before - after[name]).double(), learning_rate * mean, atol=1e-5)
