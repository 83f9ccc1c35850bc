"""The scheduler's request handling: jobs, watches, task streams and reports (no gRPC here)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

from services.scheduler.dispatch import Dispatcher
from services.scheduler.events import EventLog
from services.scheduler.jobs import normalize_spec
from services.scheduler.policies import POLICIES
from services.scheduler.runner import AggregatorPort, JobRunner, TicketMinter
from services.scheduler.store import JobStore, NodeView, PatientJobStore
from tessera.common.errors import Conflict, NotFound, NotLeader, StoreUnavailable
from tessera.common.ids import check_id
from tessera.common.retry import Backoff
from tessera.v1 import common_pb2, scheduler_pb2

__all__ = ["SchedulerCore"]

log = logging.getLogger(__name__)

_TERMINAL = frozenset(
    {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
)


def _copy(job: common_pb2.Job) -> common_pb2.Job:
    out = common_pb2.Job()
    out.CopyFrom(job)
    return out


class SchedulerCore:
    """Owns the job runners, the node view and the dispatcher."""

    def __init__(
        self,
        store: JobStore,
        nodes: NodeView,
        aggregator: AggregatorPort,
        *,
        tickets: TicketMinter | None = None,
    ) -> None:
        self._store = store
        self._stopping = threading.Event()
        # Runners outlive etcd outages; RPC handlers answer UNAVAILABLE at once instead.
        self._patient_store = PatientJobStore(store, stop=self._stopping)
        self._nodes = nodes
        self._nodes.subscribe(self._on_nodes_changed)
        self._aggregator = aggregator
        self.dispatcher = Dispatcher()
        self._runners: dict[str, JobRunner] = {}
        self._lock = threading.Lock()
        self._policies = frozenset(POLICIES)
        self._leading = False
        self._tickets = tickets

    @property
    def leading(self) -> bool:
        """Whether this replica leads (serves jobs) now."""
        return self._leading

    def _require_leader(self) -> None:
        if not self._leading:
            raise NotLeader("this scheduler is a standby; the leader serves jobs")

    def start(self) -> None:
        """Lead: watch nodes and resume every unfinished job found in the store.

        Waits (with backoff, logging) while etcd is unreachable, so a scheduler may start
        before its etcd does.
        """
        self._stopping = threading.Event()
        self._patient_store = PatientJobStore(self._store, stop=self._stopping)
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                self._nodes.start()
                break
            except StoreUnavailable as exc:
                log.warning("waiting for etcd: %s", exc)
                if backoff.wait(self._stopping):
                    raise
        for job in self._patient_store.list_jobs():
            if job.state not in _TERMINAL:
                self._resume(job)
        self._leading = True

    def stop(self) -> None:
        """Stop leading: abandon the runners without writing, stop watching nodes.

        Unfinished jobs stay in the store as they are and resume wherever the next leader
        starts (this replica again, or another one).
        """
        self._leading = False
        self._stopping.set()
        self._nodes.stop()
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for runner in runners:
            runner.abandon()
        for runner in runners:
            runner.join(timeout=10)
        for node_id in list(self.dispatcher.nodes()):
            self.dispatcher.forget(node_id)

    def _resume(self, job: common_pb2.Job) -> None:
        version, next_round = self._aggregator.open_job(job.job_id, job.spec)
        if version != job.model_version or next_round != job.rounds_completed:
            log.warning(
                "job %s: aggregator holds version %d at round %d, record says %d at round %d; "
                "continuing from the aggregator's",
                job.job_id,
                version,
                next_round,
                job.model_version,
                job.rounds_completed,
            )
            job.model_version = version
            job.rounds_completed = next_round
        self._start_runner(job)

    def _start_runner(self, job: common_pb2.Job) -> None:
        runner = JobRunner(
            job,
            store=self._patient_store,
            aggregator=self._aggregator,
            dispatcher=self.dispatcher,
            live_nodes=self._nodes.nodes,
            events=EventLog(),
            tickets=self._tickets,
        )
        with self._lock:
            self._runners[job.job_id] = runner
        runner.start()

    def _on_nodes_changed(self, lost: set[str]) -> None:
        with self._lock:
            runners = list(self._runners.values())
        for node_id in lost:
            self.dispatcher.forget(node_id)
        for runner in runners:
            runner.on_nodes_changed(lost)

    def submit(self, spec: common_pb2.JobSpec) -> str:
        """Validate, open on the aggregator, persist and start a job; return its id.

        Raises:
            InvalidSpec: the spec breaks a rule (the message names the field).
            Unavailable: the aggregator or etcd cannot be reached.
        """
        self._require_leader()
        normalized = normalize_spec(spec, self._policies)
        job_id = uuid.uuid4().hex[:12]
        self._aggregator.open_job(job_id, normalized)
        job = common_pb2.Job(
            job_id=job_id,
            spec=normalized,
            state=common_pb2.JOB_STATE_PENDING,
            created_at=time.time(),
            aggregator_address=self._aggregator.address,
        )
        self._store.save_job(job)
        self._start_runner(job)
        return job_id

    def _runner(self, job_id: str) -> JobRunner | None:
        with self._lock:
            return self._runners.get(job_id)

    def get(self, job_id: str) -> common_pb2.Job:
        """The job's current record.

        Raises:
            InvalidSpec: empty id.
            NotFound: no such job.
        """
        check_id(job_id, "job_id")
        self._require_leader()
        runner = self._runner(job_id)
        return _copy(runner.job) if runner else self._store.get_job(job_id)

    def list_jobs(self) -> list[common_pb2.Job]:
        """Every job, oldest first."""
        self._require_leader()
        stored = {j.job_id: j for j in self._store.list_jobs()}
        with self._lock:
            live = {job_id: _copy(r.job) for job_id, r in self._runners.items()}
        stored.update(live)
        return sorted(stored.values(), key=lambda j: j.created_at)

    def metrics(self, job_id: str) -> list[common_pb2.RoundMetrics]:
        """Every completed round's metrics, oldest first.

        Raises:
            NotFound: no such job.
        """
        self.get(job_id)
        return self._store.round_metrics(job_id)

    def cancel(self, job_id: str) -> common_pb2.Job:
        """Cancel a running job; a finished job is returned unchanged.

        Raises:
            NotFound: no such job.
        """
        job = self.get(job_id)
        runner = self._runner(job_id)
        if runner is not None and job.state not in _TERMINAL:
            runner.cancel()
            runner.join(timeout=10)
        return self.get(job_id)

    def watch(self, job_id: str, stop: threading.Event) -> Iterator[scheduler_pb2.JobEvent]:
        """A snapshot event, then every new event until the job finishes or ``stop`` is set.

        Raises:
            NotFound: no such job.
        """
        job = self.get(job_id)
        runner = self._runner(job_id)
        events = runner.events if runner else None
        follow = events.follow(stop) if events is not None else iter(())
        yield scheduler_pb2.JobEvent(
            kind=scheduler_pb2.JOB_EVENT_KIND_SNAPSHOT,
            job=job,
            round=job.rounds_completed,
            metrics=job.last_metrics,
            live_nodes=len(self._nodes.nodes()),
            time=time.time(),
        )
        if job.state in _TERMINAL:
            return
        yield from follow

    def live_node_count(self) -> int:
        """How many nodes hold a live lease."""
        return len(self._nodes.nodes())

    def task_counts(self) -> dict[str, int]:
        """Tasks of every round in progress, by state."""
        with self._lock:
            runners = list(self._runners.values())
        counts: dict[str, int] = {}
        for runner in runners:
            for state, count in runner.task_counts().items():
                counts[state] = counts.get(state, 0) + count
        return counts

    def wake_watchers(self, job_id: str) -> None:
        """Let the job's watch streams re-check whether their RPC ended."""
        runner = self._runner(job_id)
        if runner is not None:
            runner.events.wake()

    def stream_tasks(self, node_id: str, stop: threading.Event) -> Iterator[scheduler_pb2.Task]:
        """Tasks for a registered node until ``stop`` or the node is lost.

        Raises:
            InvalidSpec: empty id.
            NotFound: the node is not registered (or its lease expired).
        """
        check_id(node_id, "node_id")
        self._require_leader()
        if not self._nodes.contains(node_id):
            raise NotFound(f"node {node_id!r} is not registered (or its lease expired)")
        return self.dispatcher.stream(node_id, stop)

    def report(self, request: scheduler_pb2.ReportTaskRequest) -> bool:
        """Hand a task report to its job; False when stale.

        Raises:
            NotFound: no such job.
            Conflict: the job already finished.
        """
        check_id(request.job_id, "job_id")
        check_id(request.node_id, "node_id")
        self._require_leader()
        runner = self._runner(request.job_id)
        if runner is None:
            self._store.get_job(request.job_id)  # NotFound for unknown jobs
            raise Conflict(f"job {request.job_id!r} is not running")
        return runner.report(request)
