"""``Client``: the typed SDK for submitting and following jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import grpc

from tessera.client.jobs import JobConfig
from tessera.common.retry import Backoff
from tessera.common.rpc import call_with_retry, translate_rpc_errors
from tessera.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

__all__ = ["Client", "JobHandle"]

R = TypeVar("R")

_TERMINAL = frozenset(
    {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
)


@dataclass(frozen=True)
class JobHandle:
    """A submitted job; methods go through the client that created it."""

    job_id: str
    client: Client

    def get(self) -> common_pb2.Job:
        """The job's current record."""
        return self.client.get_job(self.job_id)

    def watch(self) -> Iterator[scheduler_pb2.JobEvent]:
        """Progress events until the job ends."""
        return self.client.watch(self.job_id)

    def wait(self) -> common_pb2.Job:
        """Block until the job ends; return its final record."""
        for _event in self.watch():
            pass
        return self.get()

    def cancel(self) -> common_pb2.Job:
        """Cancel the job."""
        return self.client.cancel(self.job_id)


class Client:
    """A client of one Tessera cluster; a context manager that owns its channels.

    Errors are raised as ``TesseraError`` subclasses (``InvalidSpec``, ``NotFound``, ...) with
    the server's message. Unary calls retry UNAVAILABLE with exponential backoff.
    """

    def __init__(
        self,
        scheduler: str = "127.0.0.1:50052",
        *,
        registry: str = "127.0.0.1:50051",
        retry_attempts: int = 5,
        timeout: float = 30.0,
    ) -> None:
        self._scheduler_channel = grpc.insecure_channel(scheduler)
        self._registry_channel = grpc.insecure_channel(registry)
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(self._scheduler_channel)
        self._registry = registry_pb2_grpc.RegistryStub(self._registry_channel)
        self._attempts = retry_attempts
        self._timeout = timeout
        self._stop = threading.Event()

    def _call(self, fn: Callable[..., R], request: object) -> R:
        return call_with_retry(
            lambda: fn(request, timeout=self._timeout),
            stop=self._stop,
            attempts=self._attempts,
            backoff=Backoff(initial=0.1, maximum=2.0),
        )

    def submit(self, spec: JobConfig | common_pb2.JobSpec) -> JobHandle:
        """Submit a job.

        Raises:
            InvalidSpec: the spec breaks a rule; the message names the field.
        """
        proto = spec.to_proto() if isinstance(spec, JobConfig) else spec
        response = self._call(self._scheduler.SubmitJob, scheduler_pb2.SubmitJobRequest(spec=proto))
        return JobHandle(response.job_id, self)

    def get_job(self, job_id: str) -> common_pb2.Job:
        """The job's record.

        Raises:
            NotFound: no such job.
        """
        job: common_pb2.Job = self._call(
            self._scheduler.GetJob, scheduler_pb2.GetJobRequest(job_id=job_id)
        )
        return job

    def list_jobs(self) -> list[common_pb2.Job]:
        """Every job, oldest first."""
        response = self._call(self._scheduler.ListJobs, scheduler_pb2.ListJobsRequest())
        return list(response.jobs)

    def cancel(self, job_id: str) -> common_pb2.Job:
        """Cancel a job."""
        job: common_pb2.Job = self._call(
            self._scheduler.CancelJob, scheduler_pb2.CancelJobRequest(job_id=job_id)
        )
        return job

    def list_nodes(self) -> list[common_pb2.Node]:
        """Live volunteer nodes."""
        response = self._call(self._registry.ListNodes, registry_pb2.ListNodesRequest())
        return list(response.nodes)

    def watch(self, job_id: str) -> Iterator[scheduler_pb2.JobEvent]:
        """A snapshot event, then progress events until the job ends.

        Raises:
            NotFound: no such job.
        """
        with translate_rpc_errors():
            yield from self._scheduler.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id))

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
