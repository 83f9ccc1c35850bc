"""Simulated volunteer nodes heartbeating a real registry: latency and false expiries.

A real etcd (``EtcdProcess``) and the registry as its own process (``python -m
services.registry``) on 127.0.0.1, configured like production: heartbeat interval ``1/rate``
seconds, patience 5, so a lease expires 5 intervals after a node's last beat. ``--nodes`` nodes
register, then each beats ``--rate`` times per second for ``--seconds``; the beats of all nodes
are spread evenly over the interval and fired from one asyncio loop (a heap of due times, one
``grpc.aio`` channel per node, as each volunteer has its own connection). One beat in ten
(``--load-change``) reports a changed load, which the registry writes to etcd. Authentication
is on as deployed (``--no-auth``: off): nodes register with a join token and sign a fresh proof
for every heartbeat.

False expiries are counted three ways while the nodes beat: heartbeats answered NOT_FOUND, DELETE
events on the nodes prefix from an etcd watch, and nodes missing from ``ListNodes`` (polled every
5 s). At the end every node must still be in etcd.

Baselines, measured in the same run at the same rate over the same channels, half before the
nodes register and half after they leave (``--baseline-seconds`` in all, default 30): the
standard health check of the registry (a no-op RPC through the same server, which skips
authentication), and a bare etcd ``Range`` (the store the heartbeat goes through). The ratio is
heartbeat p99 over health-check p99.

Usage: ``python bench/heartbeat_load.py [--nodes 200] [--seconds 60] [--rate 1] [--quick]
[--no-auth] [--json]``. Exit status 1 if a node expired falsely or p99 is 50 ms or more.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import etcd3.events
import grpc
from _support import await_ready_file, percentile, proc_status_bytes
from etcd3.etcdrpc import KVStub, RangeRequest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.common.auth import ClusterKey, NodeSigner, Role
from tessera.common.etcd import connect
from tessera.common.etcd.server import EtcdProcess
from tessera.v1 import common_pb2, registry_pb2, registry_pb2_grpc

PREFIX = "/load"
PATIENCE = 5
P99_LIMIT_MS = 50.0
LIST_EVERY = 5.0


@dataclass
class Series:
    """Latencies (seconds) and status codes of one kind of call."""

    latencies: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    lags: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ms = [x * 1000 for x in self.latencies]
        return {
            "calls": len(ms),
            "p50_ms": round(percentile(ms, 50), 2),
            "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(max(ms), 2) if ms else None,
            "codes": dict(self.codes),
            "schedule_lag_p99_ms": round(percentile([x * 1000 for x in self.lags], 99), 2),
        }


async def fixed_rate(
    fire: Callable[[int], Coroutine[Any, Any, Any]], count: int, rate: float, seconds: float
) -> Series:
    """Call ``fire(i)`` for ``i`` in ``range(count)``, each ``rate`` times a second.

    The calls are spread evenly over the interval; a heap holds each one's next due time and one
    loop sleeps until the earliest, starts it as a task and moves on, so a slow call never
    delays the others' schedule. Returns the schedule lag of every call (how late it started).
    """
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    start = loop.time() + 0.05
    end = start + seconds
    due_times = [(start + i * interval / count, i) for i in range(count)]
    heapq.heapify(due_times)
    running: set[asyncio.Task[Any]] = set()
    lags = Series()
    while due_times and due_times[0][0] < end:
        due, index = heapq.heappop(due_times)
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.lags.append(max(0.0, loop.time() - due))
        task: asyncio.Task[Any] = asyncio.create_task(fire(index))
        running.add(task)
        task.add_done_callback(running.discard)
        heapq.heappush(due_times, (due + interval, index))
    await asyncio.gather(*running)
    return lags


async def timed(series: Series, call: Awaitable[Any]) -> Any:
    """Await ``call``, recording its latency and status code in ``series``."""
    started = time.perf_counter()
    try:
        result = await call
    except grpc.aio.AioRpcError as exc:
        series.latencies.append(time.perf_counter() - started)
        series.codes[exc.code().name] += 1
        return None
    series.latencies.append(time.perf_counter() - started)
    series.codes["OK"] += 1
    return result


class DeleteWatch:
    """DELETE events under a prefix, from an etcd watch in a thread of its own."""

    def __init__(self, endpoint: str, prefix: str) -> None:
        self._client = connect(endpoint)
        self._events, self._cancel = self._client.watch_prefix(prefix)
        self.deletes: list[tuple[float, str]] = []
        self.puts = 0
        self._thread = threading.Thread(target=self._follow, name="delete-watch", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        for event in self._events:
            if isinstance(event, etcd3.events.DeleteEvent):
                self.deletes.append((time.monotonic(), event.key.decode(errors="replace")))
            else:
                self.puts += 1

    def stop(self) -> None:
        self._cancel()
        self._thread.join(timeout=10)
        self._client.close()


def start_registry(
    etcd: EtcdProcess, interval: float, workdir: Path, key: ClusterKey | None
) -> tuple[Any, int]:
    """The registry as a process (authenticating with ``key``); returns it with its port."""
    ready = workdir / "registry.ready"
    log = workdir / "registry.log"
    command = [
        sys.executable,
        "-m",
        "services.registry",
        "--port",
        "0",
        "--ready-file",
        str(ready),
        "--etcd",
        etcd.endpoint,
        "--etcd-prefix",
        PREFIX,
        "--heartbeat-interval",
        str(interval),
        "--patience",
        str(PATIENCE),
        "--log-level",
        "WARNING",
        "--metrics-port",
        "-1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_CLUSTER_KEY"}
    if key is not None:
        env["TESSERA_CLUSTER_KEY"] = key.to_hex()
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    info = await_ready_file(process, ready, log)
    return process, int(info["port"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The ``authorization`` metadata for a token (None: no credentials)."""
    return None if token is None else (("authorization", f"Bearer {token}"),)


async def run(
    args: argparse.Namespace, etcd: EtcdProcess, port: int, pid: int, key: ClusterKey | None
) -> dict[str, Any]:
    address = f"127.0.0.1:{port}"
    join = key.mint(Role.JOIN, "load") if key is not None else None
    submitter = key.mint(Role.SUBMITTER, "load") if key is not None else None
    heartbeat_method = "/tessera.v1.Registry/Heartbeat"
    channels = [grpc.aio.insecure_channel(address) for _ in range(args.nodes)]
    etcd_channel = grpc.aio.insecure_channel(etcd.endpoint)
    stubs = [registry_pb2_grpc.RegistryStub(c) for c in channels]
    health = [health_pb2_grpc.HealthStub(c) for c in channels]
    kv = KVStub(etcd_channel)
    try:
        # Baselines at the same rate, half before the nodes register and half after they
        # deregister, so that both see the machine as the heartbeats did.
        baseline = Series()
        etcd_baseline = Series()
        check = health_pb2.HealthCheckRequest(service="")
        probe = RangeRequest(key=f"{PREFIX}/nodes/none".encode())

        async def baselines() -> None:
            half = args.baseline_seconds / 2
            lags = await fixed_rate(
                lambda i: timed(baseline, health[i].Check(check, timeout=5)),
                args.nodes,
                args.rate,
                half,
            )
            baseline.lags += lags.lags
            lags = await fixed_rate(
                lambda i: timed(etcd_baseline, kv.Range(probe, timeout=5)),
                args.nodes,
                args.rate,
                half,
            )
            etcd_baseline.lags += lags.lags

        await baselines()

        watch = DeleteWatch(etcd.endpoint, f"{PREFIX}/nodes/")
        registrations = Series()
        node_ids: list[str] = []
        signers: list[NodeSigner | None] = []
        for i, stub in enumerate(stubs):
            profile = common_pb2.NodeProfile(
                hostname=f"load-{i}", cpu_cores=4, memory_bytes=8 << 30, throughput=1000.0
            )
            request = registry_pb2.RegisterRequest(profile=profile)
            response = await timed(registrations, stub.Register(request, metadata=bearer(join)))
            if response is None:
                raise RuntimeError(f"node {i} could not register: {registrations.codes}")
            node_ids.append(response.node_id)
            signers.append(NodeSigner(response.node_id, response.node_secret) if key else None)
        ttl = response.lease_ttl_seconds
        registered_at = time.monotonic()

        beats = Series()
        loads = [common_pb2.NodeLoad() for _ in range(args.nodes)]
        rng = random.Random(args.seed)
        lost_answers: list[str] = []

        async def beat(i: int) -> None:
            if rng.random() < args.load_change:
                loads[i].completed_tasks += 1
                loads[i].running_tasks = 1 - loads[i].running_tasks
            request = registry_pb2.HeartbeatRequest(node_id=node_ids[i], load=loads[i])
            signer = signers[i]
            # A node signs a fresh proof for every beat, as the worker does.
            proof = signer.proof(heartbeat_method) if signer is not None else None
            before = beats.codes["NOT_FOUND"]
            await timed(beats, stubs[i].Heartbeat(request, timeout=5, metadata=bearer(proof)))
            if beats.codes["NOT_FOUND"] > before:
                lost_answers.append(node_ids[i])

        missing_in_list: Counter[str] = Counter()
        stop_listing = asyncio.Event()

        async def poll_list() -> int:
            polls = 0
            while not stop_listing.is_set():
                try:
                    await asyncio.wait_for(stop_listing.wait(), LIST_EVERY)
                except TimeoutError:
                    pass
                listed = await stubs[0].ListNodes(
                    registry_pb2.ListNodesRequest(), timeout=10, metadata=bearer(submitter)
                )
                present = {n.node_id for n in listed.nodes}
                missing_in_list.update(set(node_ids) - present)
                polls += 1
            return polls

        cpu_before = cpu_seconds(pid)
        lister = asyncio.create_task(poll_list())
        lags = await fixed_rate(beat, args.nodes, args.rate, args.seconds)
        beats.lags = lags.lags
        stop_listing.set()
        polls = await lister
        cpu_used = cpu_seconds(pid) - cpu_before
        beat_phase_end = time.monotonic()

        client = connect(etcd.endpoint)
        try:
            stored = {meta.key.decode() for _value, meta in client.get_prefix(f"{PREFIX}/nodes/")}
        finally:
            client.close()
        false_deletes = [k for t, k in watch.deletes if registered_at <= t <= beat_phase_end]
        watch.stop()
        still_stored = sum(1 for n in node_ids if f"{PREFIX}/nodes/{n}" in stored)
        for node_id, stub, signer in zip(node_ids, stubs, signers, strict=True):
            proof = signer.proof("/tessera.v1.Registry/Deregister") if signer else None
            await stub.Deregister(
                registry_pb2.DeregisterRequest(node_id=node_id), timeout=5, metadata=bearer(proof)
            )
        await baselines()
    finally:
        for channel in (*channels, etcd_channel):
            await channel.close(None)

    heartbeat = beats.summary()
    health_summary = baseline.summary()
    ratio = heartbeat["p99_ms"] / health_summary["p99_ms"] if health_summary["p99_ms"] else None
    false_expiries = len(set(lost_answers)) + len(false_deletes) + len(missing_in_list)
    return {
        "authentication": key is not None,
        "nodes": args.nodes,
        "seconds": args.seconds,
        "rate_hz": args.rate,
        "lease_ttl_s": ttl,
        "heartbeat": heartbeat,
        "beats_per_second": round(heartbeat["calls"] / args.seconds, 1),
        "baseline_health_check": health_summary,
        "baseline_etcd_range": etcd_baseline.summary(),
        "p99_ratio_heartbeat_over_health": round(ratio, 2) if ratio else None,
        "false_expiries": false_expiries,
        "not_found_answers": beats.codes.get("NOT_FOUND", 0),
        "watch_deletes": len(false_deletes),
        "missing_from_list_nodes": sum(missing_in_list.values()),
        "list_nodes_polls": polls,
        "nodes_in_etcd_at_end": still_stored,
        "load_writes_seen_by_watch": watch.puts,
        "registry_cpu_percent": round(100 * cpu_used / args.seconds, 1),
        "registry_rss_mib": round(proc_status_bytes(pid) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1.0, help="heartbeats per node per second")
    parser.add_argument("--baseline-seconds", type=float, default=None)
    parser.add_argument("--load-change", type=float, default=0.1, help="share of beats")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="50 nodes for 10 s")
    parser.add_argument("--json", action="store_true", help="print one JSON summary line")
    parser.add_argument(
        "--no-auth", action="store_true", help="registry without a cluster key (no proofs)"
    )
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.seconds = 50, 10.0
    if args.baseline_seconds is None:
        args.baseline_seconds = min(args.seconds, 30.0)

    with tempfile.TemporaryDirectory(prefix="tessera-load-") as tmp, EtcdProcess() as etcd:
        key = None if args.no_auth else ClusterKey.generate()
        process, port = start_registry(etcd, 1.0 / args.rate, Path(tmp), key)
        try:
            result = asyncio.run(run(args, etcd, port, process.pid, key))
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    result["ok"] = (
        result["false_expiries"] == 0
        and result["nodes_in_etcd_at_end"] == args.nodes
        and result["heartbeat"]["p99_ms"] < P99_LIMIT_MS
        and set(result["heartbeat"]["codes"]) == {"OK"}
    )
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    sys.exit(0 if result["ok"] else 1)


def _print(r: dict[str, Any]) -> None:
    h, b, e = r["heartbeat"], r["baseline_health_check"], r["baseline_etcd_range"]
    print(
        f"{r['nodes']} nodes x {r['rate_hz']} Hz for {r['seconds']} s "
        f"(lease TTL {r['lease_ttl_s']} s, authentication {'on' if r['authentication'] else 'off'}"
        f"): {h['calls']} heartbeats, {r['beats_per_second']}/s"
    )
    for label, s in (
        ("heartbeat", h),
        ("health check (baseline)", b),
        ("etcd Range (baseline)", e),
    ):
        print(
            f"  {label:24} p50 {s['p50_ms']:7.2f} ms  p90 {s['p90_ms']:7.2f}  "
            f"p99 {s['p99_ms']:7.2f}  max {s['max_ms']:7.2f}  codes {s['codes']}  "
            f"(schedule lag p99 {s['schedule_lag_p99_ms']} ms)"
        )
    print(f"  p99 ratio heartbeat / health check: {r['p99_ratio_heartbeat_over_health']}")
    print(
        f"  false expiries: {r['false_expiries']} (NOT_FOUND answers {r['not_found_answers']}, "
        f"watch DELETEs {r['watch_deletes']}, missing from ListNodes "
        f"{r['missing_from_list_nodes']} over {r['list_nodes_polls']} polls); "
        f"in etcd at the end: {r['nodes_in_etcd_at_end']}/{r['nodes']}"
    )
    print(
        f"  load writes seen by the watch: {r['load_writes_seen_by_watch']}; registry CPU "
        f"{r['registry_cpu_percent']}% of one core, RSS {r['registry_rss_mib']} MiB"
    )
    print("OK" if r["ok"] else "FAILED")


if __name__ == "__main__":
    main()
