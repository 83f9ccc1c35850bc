"""Every RPC of the registry, scheduler and aggregator under malformed and random input.

A small, derandomised hypothesis budget per RPC against real servers on 127.0.0.1 and the
session etcd: every answer must be one of ``ALLOWED_CODES`` (never INTERNAL, UNKNOWN or
UNAVAILABLE), no service may log an unexpected error, and every server must still pass its
health check afterwards. ``bench/fuzz.py`` runs the same targets with a budget of thousands
against services in their own processes.

The tests after the fuzz targets replay the minimal examples of what the fuzzer found. Those
not fixed yet are marked ``xfail(strict=True)``, and the fuzz tests tolerate exactly their
signature (``_known_issue``), so that the suite stays green while they are open and says so
when they close: once a fix lands its test passes, strict xfail turns that into a failure, and
the mark and its ``_known_issue`` branch go.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from prometheus_client import REGISTRY

from services.aggregator.config import AggregatorConfig
from services.aggregator.server import create_aggregator_server
from services.registry.config import RegistryConfig
from services.registry.server import create_registry_server
from services.scheduler.config import SchedulerConfig
from services.scheduler.server import create_scheduler_server
from tessera.common.auth import ClusterKey
from tessera.common.service import CommonConfig
from tessera.v1 import aggregator_pb2, common_pb2
from tests.fuzz.strategies import (
    ALLOWED_CODES,
    CLIENT_OPTIONS,
    SERVICES,
    Case,
    Frame,
    FuzzContext,
    Known,
    Limits,
    Many,
    ModelTable,
    Outcome,
    Payload,
    PushPlan,
    Stall,
    StreamRead,
    Ticket,
    Undecodable,
    describe,
    health_status,
    targets,
)

LOOPBACK = CommonConfig(
    host="127.0.0.1", port=0, metrics_port=None, ready_file=None, log_level="INFO"
)
# CI keeps generated values small enough to stay quick; bench/fuzz.py uses the full limits.
CI_LIMITS = Limits(max_text=20_000, max_bytes=64 << 10, max_repeat=300, max_layers=50)
TARGETS = targets(CI_LIMITS)
# The undecodable targets are replayed below with their minimal example, for every method.
FUZZED = sorted(name for name in TARGETS if not name.endswith("/undecodable"))
STREAMS = {"GetModel", "WatchJob", "StreamTasks", "PushGradient"}
EXAMPLES = 25
# Streams often run to their (short) deadline; fewer examples keep the file within budget.
STREAM_EXAMPLES = 12
PUSH = "/tessera.v1.Aggregator/PushGradient"
# One past the largest gRPC request etcd accepts (its request limit plus its gRPC margin).
ETCD_OVERSIZED = 2_097_152


class _ErrorLog(logging.Handler):
    """Collects ERROR records of the services and of gRPC's server.

    That is an interceptor's "unexpected error", a job runner's crash, and gRPC's own
    "Exception calling application" for an exception that escaped every handler.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("services", "tessera", "grpc")):
            self.records.append(record)


def _known_issue(record: logging.LogRecord) -> str | None:
    """The regression test of an open finding this ERROR record belongs to, if any.

    No open finding logs an error now; a new one adds its signature here with its xfail test.
    """
    del record
    return None


@dataclass
class FuzzCluster:
    context: FuzzContext
    channels: dict[str, grpc.Channel]
    errors: _ErrorLog
    checkpoints: Path
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)


@contextmanager
def _cluster(etcd: Any, key: ClusterKey | None, checkpoints: Path) -> Iterator[FuzzCluster]:
    """Registry, aggregator (checkpointing) and scheduler in this process, with ``key``."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    common = replace(LOOPBACK, cluster_key=key)
    prefix = f"/fuzz-{uuid.uuid4().hex[:10]}"
    errors = _ErrorLog()
    logging.getLogger().addHandler(errors)
    registry, registry_port, _ = create_registry_server(
        RegistryConfig(
            common=common,
            etcd=etcd.endpoint,
            etcd_prefix=prefix,
            heartbeat_interval=1.0,
            patience=5,
        )
    )
    aggregator, aggregator_port, _, _core = create_aggregator_server(
        AggregatorConfig(common=common, checkpoint_dir=checkpoints)
    )
    scheduler = create_scheduler_server(
        SchedulerConfig(
            common=common,
            etcd=etcd.endpoint,
            etcd_prefix=prefix,
            aggregator=f"127.0.0.1:{aggregator_port}",
            max_workers=32,
        )
    )
    ports = {"registry": registry_port, "scheduler": scheduler.port, "aggregator": aggregator_port}
    channels = {
        name: grpc.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_OPTIONS)
        for name, port in ports.items()
    }
    context = FuzzContext(channels, heartbeat_interval=1.0, key=key).start()
    try:
        yield FuzzCluster(context, channels, errors, checkpoints)
    finally:
        context.close()
        for channel in channels.values():
            channel.close()
        scheduler.stop(grace=0)
        aggregator.stop(0).wait()
        registry.stop(0).wait()
        logging.getLogger().removeHandler(errors)


@pytest.fixture(scope="module")
def fuzz_cluster(
    etcd_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzCluster]:
    """Authentication on, as deployed: cases mostly carry the right credentials."""
    checkpoints = tmp_path_factory.mktemp("fuzz") / "checkpoints"
    with _cluster(etcd_server, ClusterKey.generate(), checkpoints) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def open_cluster(
    etcd_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzCluster]:
    """Authentication off (local development): any caller may claim any node id."""
    checkpoints = tmp_path_factory.mktemp("open") / "checkpoints"
    with _cluster(etcd_server, None, checkpoints) as cluster:
        yield cluster


@pytest.mark.parametrize("name", FUZZED)
def test_rpc_answers_only_expected_statuses(fuzz_cluster: FuzzCluster, name: str) -> None:
    target = TARGETS[name]

    @settings(
        max_examples=STREAM_EXAMPLES if name.split("/")[1] in STREAMS else EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=target.cases)
    def answers_with_an_expected_status(case: Any) -> None:
        logged = len(fuzz_cluster.errors.records)
        outcome = target.run(fuzz_cluster.context, case)
        fuzz_cluster.outcomes.append((name, outcome))
        if outcome.code in ALLOWED_CODES:
            return
        # An INTERNAL is logged by the server before it is answered.
        causes = [_known_issue(r) for r in fuzz_cluster.errors.records[logged:]]
        assert causes and None not in causes, (
            f"{name} answered {outcome.code} ({outcome.details}) to {describe(case)}"
        )

    fuzz_cluster.context.refresh()
    answers_with_an_expected_status()
    assert health_status(fuzz_cluster.channels[target.service]) == "SERVING"


def test_fuzzing_reached_past_validation(fuzz_cluster: FuzzCluster) -> None:
    # Guards the strategies themselves: a fuzzer that only ever meets the first check of
    # each RPC tests nothing behind it.
    if not fuzz_cluster.outcomes:
        pytest.skip("checks the outcomes of the fuzz tests, which did not run")
    codes = {(name, o.code) for name, o in fuzz_cluster.outcomes}
    for name in ("Registry/Register", "Scheduler/SubmitJob", "Scheduler/ReportTask"):
        assert (name, "OK") in codes
    for push in ("Aggregator/PushGradient", "Aggregator/PushSmallGradient"):
        receipts = {o.details for name, o in fuzz_cluster.outcomes if name == push}
        assert any(r.startswith("RECEIPT_STATUS_") for r in receipts), push
    assert len(fuzz_cluster.outcomes) >= len(FUZZED) * STREAM_EXAMPLES


def test_no_service_logged_an_unexpected_error(fuzz_cluster: FuzzCluster) -> None:
    records = fuzz_cluster.errors.records
    assert [r.getMessage() for r in records if _known_issue(r) is None] == []


def test_every_server_still_serves(fuzz_cluster: FuzzCluster) -> None:
    assert {name: health_status(ch) for name, ch in fuzz_cluster.channels.items()} == {
        "registry": "SERVING",
        "scheduler": "SERVING",
        "aggregator": "SERVING",
    }


# -- minimal examples of what the fuzzer found ---------------------------------------------------


@pytest.mark.parametrize(
    "service,method",
    [(key, m.name) for key, desc in SERVICES.items() for m in desc.methods],
)
def test_undecodable_request_is_invalid_argument(
    fuzz_cluster: FuzzCluster, service: str, method: str
) -> None:
    # b"\x00" is a tag for field 0, which protobuf refuses: gRPC's own deserialisation error
    # happens before any interceptor and is answered INTERNAL.
    target = TARGETS[f"{SERVICES[service].name}/undecodable"]
    outcome = target.run(fuzz_cluster.context, Case(Undecodable(method, b"\x00")))
    assert outcome.code == "INVALID_ARGUMENT", outcome


_OVERSIZED_JOB = {"job_id": Many("x", ETCD_OVERSIZED)}
_OVERSIZED_NODE = {"node_id": Many("x", ETCD_OVERSIZED)}
# Callers with credentials reach these with a 2 MiB job id.
_OVERSIZED_WITH_AUTH = [
    ("Scheduler/GetJob", _OVERSIZED_JOB),
    ("Scheduler/CancelJob", _OVERSIZED_JOB),
    ("Scheduler/GetMetrics", _OVERSIZED_JOB),
    ("Scheduler/WatchJob", StreamRead(_OVERSIZED_JOB, 10.0, None)),
    ("Scheduler/ReportTask", {**_OVERSIZED_JOB, "node_id": Known("node", 0)}),
]
# A node's proof names its id, and a 2 MiB one exceeds the metadata limit: these are reached
# only with authentication off.
_OVERSIZED_WITHOUT_AUTH = [
    ("Registry/Heartbeat", _OVERSIZED_NODE),
    ("Registry/Deregister", _OVERSIZED_NODE),
    ("Scheduler/StreamTasks", StreamRead(_OVERSIZED_NODE, 10.0, None)),
]


def _check_oversized_id(cluster: FuzzCluster, name: str, body: Any) -> None:
    # A 2 MiB id overflows etcd's request limit; the answer must blame the request, not report
    # the store as unavailable (which clients retry), and must not echo the id back whole.
    outcome = TARGETS[name].run(cluster.context, Case(body))
    assert outcome.code in ALLOWED_CODES, outcome
    assert len(outcome.details) < 1000


@pytest.mark.parametrize("name,body", _OVERSIZED_WITH_AUTH)
def test_oversized_id_is_the_callers_fault(fuzz_cluster: FuzzCluster, name: str, body: Any) -> None:
    _check_oversized_id(fuzz_cluster, name, body)


@pytest.mark.parametrize("name,body", _OVERSIZED_WITH_AUTH + _OVERSIZED_WITHOUT_AUTH)
def test_oversized_id_is_the_callers_fault_without_auth(
    open_cluster: FuzzCluster, name: str, body: Any
) -> None:
    _check_oversized_id(open_cluster, name, body)


def _server_counts(method: str) -> Counter[str]:
    """The interceptor's count of answered calls of ``method`` by code, and of handled calls."""
    out: Counter[str] = Counter()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.labels.get("method") != method:
                continue
            if sample.name == "tessera_rpcs_total":
                out[sample.labels["code"]] += int(sample.value)
            elif sample.name == "tessera_rpc_seconds_count":
                out["handled"] += int(sample.value)
    return out


# A contribution to round 0 of the job ``fresh_job`` opens, missing only its task index.
_HEADER = {
    "job_id": "cut-streams",
    "round": 0,
    "node_id": "cut-stream",
    "base_version": 0,
    "samples": 1,
    "tensors": ModelTable(),
    "ticket": Ticket(),
}


@pytest.fixture(scope="module")
def fresh_job(fuzz_cluster: FuzzCluster) -> str:
    spec = common_pb2.JobSpec(
        model="mlp", dataset="digits", tasks_per_round=64, learning_rate=0.1, optimizer="sgd"
    )
    request = aggregator_pb2.OpenJobRequest(job_id=str(_HEADER["job_id"]), spec=spec)
    fuzz_cluster.context.call("aggregator", "OpenJob", request)
    return request.job_id


@pytest.mark.parametrize(
    "plan,client_sees,server_may_count",
    [
        # The client stops sending after the header; its deadline ends the call.
        (
            PushPlan((Frame({"header": {**_HEADER, "task_index": 60}}), Stall()), 0.3),
            "DEADLINE_EXCEEDED",
            {"DEADLINE_EXCEEDED", "CANCELLED"},
        ),
        # Half the payload, then silence.
        (
            PushPlan(
                (
                    Frame({"header": {**_HEADER, "task_index": 61}}),
                    Payload("short", b"\x00", 4096, fraction=0.5),
                    Stall(),
                ),
                0.3,
            ),
            "DEADLINE_EXCEEDED",
            {"DEADLINE_EXCEEDED", "CANCELLED"},
        ),
        # A frame over the server's message limit after a valid header. gRPC ends the call
        # with RESOURCE_EXHAUSTED; the handler may see the stream simply end first, while the
        # call still looks active, and count the short stream as INVALID_ARGUMENT.
        (
            PushPlan(
                (
                    Frame({"header": {**_HEADER, "task_index": 62}}),
                    Frame({"chunk": Many(b"\x00", (4 << 20) + 1)}),
                ),
                10.0,
            ),
            "RESOURCE_EXHAUSTED",
            {"RESOURCE_EXHAUSTED", "CANCELLED", "INVALID_ARGUMENT"},
        ),
    ],
)
def test_cut_gradient_stream_is_counted_as_cut(
    fuzz_cluster: FuzzCluster,
    fresh_job: str,
    plan: PushPlan,
    client_sees: str,
    server_may_count: set[str],
) -> None:
    # The client gets the right status, but the server's handler meets either a grpc.RpcError
    # from the request iterator (logged as unexpected, counted INTERNAL) or an iterator that
    # simply ends (counted INVALID_ARGUMENT and ledgered as a malformed contribution),
    # whichever side of a race in gRPC it lands on.
    before = _server_counts(PUSH)
    logged = len(fuzz_cluster.errors.records)
    outcome = TARGETS["Aggregator/PushGradient"].run(fuzz_cluster.context, Case(plan))
    assert outcome.code == client_sees, outcome
    deadline = time.monotonic() + 10
    while _server_counts(PUSH)["handled"] <= before["handled"]:
        assert time.monotonic() < deadline, "the server's handler did not finish"
        time.sleep(0.01)
    counted = _server_counts(PUSH) - before
    del counted["handled"]
    new_errors = [r.getMessage() for r in fuzz_cluster.errors.records[logged:]]
    del fuzz_cluster.errors.records[logged:]
    assert (set(counted) - server_may_count, new_errors) == (set(), [])


def test_model_depth_is_bounded(fuzz_cluster: FuzzCluster) -> None:
    # Each hidden size is checked but not their number: a submitter's spec of 10,000 layers of
    # width 1 passes every check, and the aggregator spends seconds and hundreds of MB building
    # the model (100,000 layers: 17 s and 0.9 GB; the 4 MiB message limit allows about
    # 2,000,000). The scheduler retries OpenJob on DEADLINE_EXCEEDED, so a slow build is
    # started again and again.
    spec = {"tasks_per_round": 1, "min_nodes": 1000, "hidden_sizes": Many(1, 10_000)}
    started = time.monotonic()
    outcome = TARGETS["Scheduler/SubmitJob"].run(fuzz_cluster.context, Case({"spec": spec}))
    assert (outcome.code, time.monotonic() - started < 1.0) == ("INVALID_ARGUMENT", True)


def test_oversized_node_ids_never_reach_the_ledger(open_cluster: FuzzCluster) -> None:
    # The ledger keeps every decision with the node id it was given; a node claiming a 1 MiB id
    # once cost the aggregator 1 MiB per rejection. Ids are now bounded before anything records
    # them, so such a push is refused as the caller's mistake and leaves no ledger entry.
    push = TARGETS["Aggregator/PushGradient"].run
    for i in range(20):
        header = {**_HEADER, "job_id": Known("job", 0), "round": 10**6, "base_version": 10**6}
        header["node_id"] = Many("n", (1 << 20) + i)
        outcome = push(open_cluster.context, Case(PushPlan((Frame({"header": header}),), 10.0)))
        assert outcome.code == "INVALID_ARGUMENT", outcome
        assert "must be 1-64 letters" in outcome.details


@pytest.mark.parametrize(
    "name,body",
    [
        ("Aggregator/CloseRound", {"job_id": "h" * 256}),
        ("Aggregator/GetModel", StreamRead({"job_id": "h" * 256}, 10.0, None)),
        (
            "Aggregator/PushGradient",
            PushPlan((Frame({"header": {**_HEADER, "job_id": "h" * 256, "task_index": 0}}),), 10.0),
        ),
    ],
)
def test_long_job_id_is_not_an_internal_error(
    fuzz_cluster: FuzzCluster, name: str, body: Any
) -> None:
    # An unknown job is looked for among the checkpoints, in <checkpoint-dir>/<job-id>/; a
    # 256-byte id is past the file system's name limit, and the OSError becomes INTERNAL.
    outcome = TARGETS[name].run(fuzz_cluster.context, Case(body))
    assert outcome.code in ALLOWED_CODES, outcome


def test_job_id_stays_inside_the_checkpoint_directory(fuzz_cluster: FuzzCluster) -> None:
    # The job id is a path component of the checkpoint: "../escaped" checkpoints beside the
    # checkpoint directory (and an absolute id anywhere the aggregator may write).
    job_id = "../escaped"
    escaped = fuzz_cluster.checkpoints.parent / "escaped"
    spec = common_pb2.JobSpec(
        model="mlp", dataset="digits", tasks_per_round=1, learning_rate=0.1, optimizer="sgd"
    )
    try:
        fuzz_cluster.context.call(
            "aggregator", "OpenJob", aggregator_pb2.OpenJobRequest(job_id=job_id, spec=spec)
        )
    except grpc.RpcError:
        return  # refused: nothing can be written for it
    header = {**_HEADER, "job_id": job_id, "task_index": 0}
    plan = PushPlan((Frame({"header": header}), Payload("exact", b"\x00", 1 << 20)), 10.0)
    TARGETS["Aggregator/PushGradient"].run(fuzz_cluster.context, Case(plan))
    close = aggregator_pb2.CloseRoundRequest(job_id=job_id, round=0, num_tasks=1)
    try:
        fuzz_cluster.context.call("aggregator", "CloseRound", close)
    except grpc.RpcError:
        pass
    assert not escaped.exists()
