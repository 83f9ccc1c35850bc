"""The gradient data plane against baselines measured in the same run, on loopback.

Four measurements, each a ratio against a baseline doing the same bytes' work with less:

* push: a ``--mb`` gradient streamed through ``PushGradient`` to a real aggregator server (its
  own process, built by ``create_aggregator_server``) against the same serialised frames through
  a bare gRPC stream-unary server (its own process) that only takes each message's length. The
  client is the worker's code path (``encode_tensors``, ``chunk_frames``, a raw-bytes
  stream-unary call). Two cases: the first contribution of a round (its buffer becomes the
  round's sum) and a later one (folded into the sum as it arrives). Besides wall time, the
  servers' CPU time per push (``/proc/<pid>/stat``) is reported: it is what the receive path
  costs, and unlike wall time it hardly moves when the machine is busy.
* memory: the aggregator's RSS high-water mark while receiving one push, in a fresh aggregator
  process per measurement: ``(VmHWM after - VmRSS before) / payload``, where "before" is after
  opening the job and a warm-up push to another job. Opening the job (model, snapshot) is
  before "before", so this is the receive path's increment.
* fold: the mean of 4 contributions through ``RoundSum`` (the first adopted, three folded, the
  result scaled in place) against in-place torch adds of the same tensors; and the same with
  ``all_finite`` on every contribution, the check the receive path makes chunk by chunk.
* gloo: ``torch.distributed`` all_reduce of the same size between 2 processes on 127.0.0.1, as
  a reference for what a collective moves on this machine.

The job is the digits MLP with hidden sizes chosen so its parameters total ``--mb`` MB of
float32 (64 -> 5000 -> h2 -> 10). Usage: ``python bench/transport.py [--mb 100] [--repeats 7]
[--json]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import torch

from services.aggregator.ingest import RoundSum
from tessera.common.grpc_server import MAX_MESSAGE_BYTES
from tessera.v1 import aggregator_pb2, aggregator_pb2_grpc, common_pb2
from tessera.wire.frames import all_finite, encode_tensors
from tessera.wire.stream import chunk_frames, specs_from_metas

_PUSH = "/tessera.v1.Aggregator/PushGradient"
_BARE = "/bench.Bare/Consume"
_FEATURES, _CLASSES = 64, 10


def hidden_sizes(megabytes: float) -> tuple[int, int]:
    """Hidden sizes (5000, h2) of a 64 -> 5000 -> h2 -> 10 MLP closest to ``megabytes`` MB."""
    first = 5000
    target = megabytes * 1e6 / 4
    fixed = _FEATURES * first + first + _CLASSES
    second = max(1, round((target - fixed) / (first + 1 + _CLASSES)))
    return first, second


def parameter_count(sizes: tuple[int, int]) -> int:
    first, second = sizes
    return _FEATURES * first + first + first * second + second + second * _CLASSES + _CLASSES


def job_spec(sizes: tuple[int, ...], tasks: int) -> common_pb2.JobSpec:
    return common_pb2.JobSpec(
        model="mlp",
        dataset="digits",
        hidden_sizes=list(sizes),
        tasks_per_round=tasks,
        optimizer="sgd",
        learning_rate=0.01,
        aggregation="mean",
    )


def gradient(sizes: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Random float32 tensors named and shaped like the MLP's parameters."""
    generator = torch.Generator().manual_seed(0)
    widths = [_FEATURES, *sizes, _CLASSES]
    out: dict[str, torch.Tensor] = {}
    for layer, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False)):
        index = 1 + 2 * layer  # nn.Sequential(Flatten, Linear, ReLU, Linear, ReLU, Linear)
        out[f"{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) * 0.01
        out[f"{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.01
    return out


# -- servers, each in its own process -------------------------------------------------------


def _serve_aggregator(ready: Any) -> None:
    from services.aggregator.config import AggregatorConfig
    from services.aggregator.server import create_aggregator_server
    from tessera.common.service import CommonConfig

    torch.set_num_threads(1)
    common = CommonConfig(
        host="127.0.0.1", port=0, metrics_port=None, ready_file=None, log_level="WARNING"
    )
    server, port, _health, _core = create_aggregator_server(AggregatorConfig(common=common))
    ready.put(port)
    server.wait_for_termination()


def _serve_bare(ready: Any) -> None:
    def consume(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = 0
        for request in requests:
            total += len(request)
        return total.to_bytes(8, "little")

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Consume": grpc.stream_unary_rpc_method_handler(consume)}
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        handlers=[handler],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.put(port)
    server.wait_for_termination()


class Child:
    """A server in a fresh process; ``port`` once it listens."""

    def __init__(self, target: Callable[[Any], None]) -> None:
        context = mp.get_context("spawn")
        ready = context.Queue()
        self.process = context.Process(target=target, args=(ready,), daemon=True)
        self.process.start()
        self.port: int = ready.get(timeout=120)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process so far."""
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status(self, field: str) -> int:
        """A ``/proc/<pid>/status`` field in bytes (VmRSS, VmHWM)."""
        with open(f"/proc/{self.process.pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def stop(self) -> None:
        self.channel.close()
        self.process.kill()
        self.process.join()


# -- the client: the worker's push path ---------------------------------------------------------


class Pusher:
    """Streams one gradient as serialised frames, as the worker does."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.encoded = encode_tensors(tensors, "none")
        self.total_bytes = self.encoded.total_bytes

    def frames(self, header: aggregator_pb2.ContributionHeader | None) -> Iterator[bytes]:
        if header is not None:
            yield aggregator_pb2.GradientFrame(header=header).SerializeToString()
        yield from chunk_frames(self.encoded.payloads)

    def header(self, job_id: str, round_index: int, task: int) -> aggregator_pb2.ContributionHeader:
        return aggregator_pb2.ContributionHeader(
            job_id=job_id,
            round=round_index,
            task_index=task,
            node_id="bench",
            base_version=round_index,
            samples=32,
            loss=1.0,
            tensors=specs_from_metas(self.encoded.metas),
        )

    def push(self, child: Child, job_id: str, round_index: int, task: int) -> float:
        call = child.channel.stream_unary(
            _PUSH,
            request_serializer=None,
            response_deserializer=aggregator_pb2.PushReceipt.FromString,
        )
        frames = self.frames(self.header(job_id, round_index, task))
        started = time.perf_counter()
        receipt = call(frames, timeout=300)
        seconds = time.perf_counter() - started
        if receipt.status != aggregator_pb2.RECEIPT_STATUS_ACCEPTED:
            raise RuntimeError(f"push not accepted: {receipt}")
        return seconds

    def bare(self, child: Child) -> float:
        call = child.channel.stream_unary(
            _BARE, request_serializer=None, response_deserializer=None
        )
        frames = self.frames(None)
        started = time.perf_counter()
        call(frames, timeout=300)
        return time.perf_counter() - started


def _open(
    child: Child, job_id: str, spec: common_pb2.JobSpec
) -> aggregator_pb2_grpc.AggregatorStub:
    stub = aggregator_pb2_grpc.AggregatorStub(child.channel)
    stub.OpenJob(aggregator_pb2.OpenJobRequest(job_id=job_id, spec=spec), timeout=300)
    return stub


def _close(stub: aggregator_pb2_grpc.AggregatorStub, job_id: str, round_index: int, n: int) -> None:
    stub.CloseRound(
        aggregator_pb2.CloseRoundRequest(job_id=job_id, round=round_index, num_tasks=n),
        timeout=300,
    )


def bench_push(sizes: tuple[int, int], repeats: int) -> dict[str, float]:
    """Wall and server CPU seconds per push: bare stream, then each aggregator and case."""
    pusher = Pusher(gradient(sizes))
    bare = Child(_serve_bare)
    aggregators = {"": Child(_serve_aggregator)}
    wall: dict[str, list[float]] = {"bare": []}
    cpu: dict[str, list[float]] = {"bare": []}

    def timed(
        name: str, child: Child, job_id: str = "", round_index: int = 0, task: int = 0
    ) -> None:
        before = child.cpu_seconds()
        seconds = (
            pusher.bare(child) if child is bare else pusher.push(child, job_id, round_index, task)
        )
        wall.setdefault(name, []).append(seconds)
        cpu.setdefault(name, []).append(child.cpu_seconds() - before)

    try:
        stubs = {}
        for prefix, child in aggregators.items():
            stubs[prefix] = (
                _open(child, "first", job_spec(sizes, 1)),
                _open(child, "later", job_spec(sizes, 2)),
            )
            # Warm-up: gRPC paths, and the buffer pools that steady-state rounds reuse.
            pusher.push(child, "first", 0, 0)
            _close(stubs[prefix][0], "first", 0, 1)
        pusher.bare(bare)
        for round_index in range(repeats):
            timed("bare", bare)
            for prefix, child in aggregators.items():
                first, later = stubs[prefix]
                timed(f"{prefix}first", child, "first", round_index + 1, 0)
                _close(first, "first", round_index + 1, 1)
                pusher.push(child, "later", round_index, 0)
                timed(f"{prefix}later", child, "later", round_index, 1)
                _close(later, "later", round_index, 2)
    finally:
        bare.stop()
        for child in aggregators.values():
            child.stop()
    megabytes = pusher.total_bytes / 1e6
    out: dict[str, float] = {"payload_mb": megabytes}
    base = statistics.median(wall["bare"])
    for name, values in wall.items():
        seconds = statistics.median(values)
        label = "bare" if name == "bare" else f"push_{name}"
        out[f"{label}_mb_per_s"] = megabytes / seconds
        # Clock ticks are 10 ms: the mean over the repeats resolves finer than one push.
        out[f"{label}_server_cpu_ms"] = 1000 * statistics.mean(cpu[name])
        if name != "bare":
            out[f"{label}_ratio"] = base / seconds
    return out


def _memory_once(sizes: tuple[int, int], later: bool) -> float:
    pusher = Pusher(gradient(sizes))
    aggregator = Child(_serve_aggregator)
    try:
        _open(aggregator, "job", job_spec(sizes, 2))
        # Warm up the gRPC and receive paths with a small job, then take the baseline.
        small = (8, 8)
        small_stub = _open(aggregator, "warm", job_spec(small, 1))
        Pusher(gradient(small)).push(aggregator, "warm", 0, 0)
        _close(small_stub, "warm", 0, 1)
        if later:
            pusher.push(aggregator, "job", 0, 0)
        before = aggregator.status("VmRSS")
        pusher.push(aggregator, "job", 0, 1 if later else 0)
        peak = aggregator.status("VmHWM")
    finally:
        aggregator.stop()
    return (peak - before) / pusher.total_bytes


def bench_memory(sizes: tuple[int, int], repeats: int) -> dict[str, float]:
    """Peak RSS increment of receiving one push, over the payload; worst of ``repeats``."""
    return {
        "memory_first_ratio": max(_memory_once(sizes, False) for _ in range(repeats)),
        "memory_later_ratio": max(_memory_once(sizes, True) for _ in range(repeats)),
    }


def bench_fold(sizes: tuple[int, int], repeats: int) -> dict[str, float]:
    """Seconds for the mean of 4 contributions: RoundSum vs in-place torch adds."""
    contributions = [
        {name: tensor * (1 + i) for name, tensor in gradient(sizes).items()} for i in range(4)
    ]
    weights = [32.0, 32.0, 16.0, 8.0]

    def fresh() -> list[dict[str, torch.Tensor]]:
        # Both sides modify their first contribution in place.
        return [{k: v.clone() for k, v in c.items()} for c in contributions[:1]] + contributions[1:]

    def baseline(inputs: list[dict[str, torch.Tensor]]) -> None:
        total = inputs[0]
        for name in total:
            total[name].mul_(weights[0])
        for contribution, weight in zip(inputs[1:], weights[1:], strict=True):
            for name, tensor in contribution.items():
                total[name].add_(tensor, alpha=weight)
        for tensor in total.values():
            tensor.div_(sum(weights))

    def folded(inputs: list[dict[str, torch.Tensor]], check: bool) -> None:
        round_sum = RoundSum()
        for contribution, weight in zip(inputs, weights, strict=True):
            if check and not all(all_finite(t) for t in contribution.values()):
                raise RuntimeError("non-finite")
            round_sum.add(contribution, weight, owned=True)
        round_sum.result()

    runs: dict[str, Callable[[list[dict[str, torch.Tensor]]], None]] = {
        "torch": baseline,
        "fold": lambda inputs: folded(inputs, False),
        "fold_checked": lambda inputs: folded(inputs, True),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            inputs = fresh()
            started = time.perf_counter()
            run(inputs)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "fold_torch_s": medians["torch"],
        "fold_s": medians["fold"],
        "fold_checked_s": medians["fold_checked"],
        "fold_ratio": medians["torch"] / medians["fold"],
        "fold_checked_ratio": medians["torch"] / medians["fold_checked"],
    }


def _gloo_worker(rank: int, port: int, numel: int, repeats: int, out: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tensor = torch.ones(numel)
    dist.all_reduce(tensor)  # warm-up
    times = []
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(tensor)
        times.append(time.perf_counter() - started)
    if rank == 0:
        out.put(statistics.median(times))
    dist.destroy_process_group()


def bench_gloo(numel: int, repeats: int) -> dict[str, float]:
    """Median seconds of a 2-process gloo all_reduce (sum) of ``numel`` float32."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_gloo_worker, args=(rank, port, numel, repeats, out))
        for rank in range(2)
    ]
    for worker in workers:
        worker.start()
    seconds: float = out.get(timeout=600)
    for worker in workers:
        worker.join(timeout=60)
    return {"gloo_allreduce_s": seconds, "gloo_mb_per_s": numel * 4 / 1e6 / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=100.0, help="gradient size in MB")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON summary line")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = hidden_sizes(args.mb)
    summary: dict[str, Any] = {"hidden_sizes": list(sizes), "parameters": parameter_count(sizes)}
    summary |= bench_push(sizes, args.repeats)
    summary |= bench_memory(sizes, max(1, args.repeats // 2))
    summary |= bench_fold(sizes, args.repeats)
    summary |= bench_gloo(parameter_count(sizes), args.repeats)
    summary["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        print(f"{key:>22}: {value:.3f}" if isinstance(value, float) else f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
