"""``Client``: the typed, synchronous SDK for submitting and following jobs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import grpc

from tessera.client.jobs import JobConfig
from tessera.client.models import ModelFile, write_model
from tessera.client.types import EventKind, Job, JobEvent, Node, RoundMetrics
from tessera.common.channels import open_channel
from tessera.common.client_auth import with_credentials
from tessera.common.errors import NotFound, Unavailable
from tessera.common.retry import Backoff
from tessera.common.rpc import call_with_retry, translate_rpc_errors
from tessera.v1 import (
    aggregator_pb2,
    aggregator_pb2_grpc,
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

__all__ = ["Client", "JobHandle", "RetryPolicy", "WatchResume"]

R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    """How unary calls and watches retry UNAVAILABLE-like failures.

    A call is retried until ``attempts`` calls were made or ``patience`` seconds passed; the
    default patience outlasts a scheduler fail-over (a leader lease of 5 s, then election).
    """

    attempts: int = 50
    patience: float = 30.0
    initial_backoff: float = 0.1
    max_backoff: float = 2.0

    def backoff(self) -> Backoff:
        """A fresh backoff sequence."""
        return Backoff(initial=self.initial_backoff, maximum=self.max_backoff)


class WatchResume:
    """The state a watch keeps across reconnections (shared by ``Client`` and ``AsyncClient``).

    Every reconnection starts with a snapshot and may repeat rounds already delivered; this
    filters those out and decides when to stop retrying.
    """

    def __init__(self, retry: RetryPolicy) -> None:
        self._retry = retry
        self._delivered = -1
        self._failures = 0
        self._last_progress = time.monotonic()
        self.backoff = retry.backoff()

    def fresh(self, raw: scheduler_pb2.JobEvent) -> JobEvent | None:
        """The event to deliver, or None for a round delivered before a reconnection."""
        event = JobEvent.from_proto(raw)
        if event.metrics is not None and event.kind is EventKind.ROUND_COMPLETED:
            if event.metrics.round <= self._delivered:
                return None
            self._delivered = event.metrics.round
        self._failures = 0
        self._last_progress = time.monotonic()
        return event

    def give_up(self) -> bool:
        """Record a failed connection; whether the retry policy is exhausted."""
        self._failures += 1
        out_of_time = time.monotonic() - self._last_progress >= self._retry.patience
        return self._failures >= self._retry.attempts or out_of_time


@dataclass(frozen=True)
class JobHandle:
    """A submitted job; methods go through the client that created it."""

    job_id: str
    client: Client

    def get(self) -> Job:
        """The job's current record."""
        return self.client.get_job(self.job_id)

    def watch(self) -> Iterator[JobEvent]:
        """Progress events until the job ends."""
        return self.client.watch(self.job_id)

    def wait(self) -> Job:
        """Block until the job ends; return its final record."""
        for _event in self.watch():
            pass
        return self.get()

    def cancel(self) -> Job:
        """Cancel the job."""
        return self.client.cancel(self.job_id)

    def download_model(self, path: str | Path) -> ModelFile:
        """Save the job's latest model as safetensors."""
        return self.client.download_model(self.job_id, path)


class Client:
    """A client of one Tessera cluster; a context manager that owns its channels.

    Errors are raised as ``TesseraError`` subclasses (``InvalidSpec``, ``NotFound``, ...) with
    the server's message. Unary calls retry UNAVAILABLE with exponential backoff; ``watch``
    reconnects and resumes after the last round it delivered.

    Args:
        scheduler: the scheduler's ``host:port``.
        registry: the registry's ``host:port`` (for ``list_nodes``).
        aggregator: override the aggregator address jobs report (for ``download_model`` from
            outside the cluster's network).
        retry: the retry policy.
        timeout: deadline of each unary call, in seconds.
        token: a submitter token (default: ``TESSERA_TOKEN``), needed when the cluster
            authenticates.
        tls: TLS credentials (``grpc.ssl_channel_credentials(...)``) for a TLS cluster.
    """

    def __init__(
        self,
        scheduler: str = "127.0.0.1:50052",
        *,
        registry: str = "127.0.0.1:50051",
        aggregator: str | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe default
        timeout: float = 30.0,
        token: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
    ) -> None:
        token = token or os.environ.get("TESSERA_TOKEN") or None
        self._credentials = (lambda _method: token) if token else None
        self._tls = tls
        self._scheduler_channel = open_channel(scheduler, tls)
        self._registry_channel = open_channel(registry, tls)
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(
            with_credentials(self._scheduler_channel, self._credentials)
        )
        self._registry = registry_pb2_grpc.RegistryStub(
            with_credentials(self._registry_channel, self._credentials)
        )
        self._aggregator_override = aggregator
        self._retry = retry
        self._timeout = timeout
        self._stop = threading.Event()

    def _call(self, fn: Callable[..., R], request: object) -> R:
        return call_with_retry(
            lambda: fn(request, timeout=self._timeout),
            stop=self._stop,
            attempts=self._retry.attempts,
            backoff=self._retry.backoff(),
            patience=self._retry.patience,
        )

    def submit(self, spec: JobConfig | common_pb2.JobSpec) -> JobHandle:
        """Submit a job.

        Raises:
            InvalidSpec: the spec breaks a rule; the message names the field.
            Unavailable: the scheduler cannot be reached.
        """
        proto = spec.to_proto() if isinstance(spec, JobConfig) else spec
        response = self._call(self._scheduler.SubmitJob, scheduler_pb2.SubmitJobRequest(spec=proto))
        return JobHandle(response.job_id, self)

    def job(self, job_id: str) -> JobHandle:
        """A handle for an existing job (not checked until used)."""
        return JobHandle(job_id, self)

    def _get_job_proto(self, job_id: str) -> common_pb2.Job:
        job: common_pb2.Job = self._call(
            self._scheduler.GetJob, scheduler_pb2.GetJobRequest(job_id=job_id)
        )
        return job

    def get_job(self, job_id: str) -> Job:
        """The job's record.

        Raises:
            NotFound: no such job.
        """
        return Job.from_proto(self._get_job_proto(job_id))

    def list_jobs(self) -> list[Job]:
        """Every job, oldest first."""
        response = self._call(self._scheduler.ListJobs, scheduler_pb2.ListJobsRequest())
        return [Job.from_proto(j) for j in response.jobs]

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (a finished job is returned unchanged).

        Raises:
            NotFound: no such job.
        """
        job = self._call(self._scheduler.CancelJob, scheduler_pb2.CancelJobRequest(job_id=job_id))
        return Job.from_proto(job)

    def metrics(self, job_id: str) -> list[RoundMetrics]:
        """Every completed round's metrics, oldest first.

        Raises:
            NotFound: no such job.
        """
        response = self._call(
            self._scheduler.GetMetrics, scheduler_pb2.GetMetricsRequest(job_id=job_id)
        )
        return [RoundMetrics.from_proto(m) for m in response.rounds]

    def list_nodes(self) -> list[Node]:
        """Live volunteer nodes."""
        response = self._call(self._registry.ListNodes, registry_pb2.ListNodesRequest())
        return [Node.from_proto(n) for n in response.nodes]

    def watch(self, job_id: str) -> Iterator[JobEvent]:
        """A snapshot event, then progress events until the job ends.

        If the connection drops, the watch reconnects (with backoff) and skips the rounds it
        already delivered.

        Raises:
            NotFound: no such job.
            Unavailable: the scheduler stayed unreachable through every retry.
        """
        resume = WatchResume(self._retry)
        while True:
            try:
                with translate_rpc_errors():
                    stream = self._scheduler.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id))
                    for raw in stream:
                        event = resume.fresh(raw)
                        if event is not None:
                            yield event
                return
            except Unavailable:
                if resume.give_up() or resume.backoff.wait(self._stop):
                    raise

    def download_model(self, job_id: str, path: str | Path) -> ModelFile:
        """Save the job's latest model to ``path`` as safetensors (with the spec as metadata).

        Raises:
            NotFound: no such job, or its aggregator no longer holds the model.
        """
        job = self._get_job_proto(job_id)
        address = self._aggregator_override or job.aggregator_address
        if not address:
            raise NotFound(f"job {job_id!r} has no aggregator address")
        with open_channel(address, self._tls) as channel:
            stub = aggregator_pb2_grpc.AggregatorStub(with_credentials(channel, self._credentials))
            with translate_rpc_errors():
                frames = stub.GetModel(
                    aggregator_pb2.GetModelRequest(job_id=job_id), timeout=self._timeout * 10
                )
                return write_model(Path(path), job, iter(frames))

    def close(self) -> None:
        """Close the channels."""
        self._stop.set()
        self._scheduler_channel.close()
        self._registry_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
