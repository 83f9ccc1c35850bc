"""``AsyncClient``: the asyncio twin of ``Client`` (grpc.aio)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from tessera.client.client import Client, RetryPolicy, WatchResume
from tessera.client.jobs import JobConfig
from tessera.client.models import ModelFile
from tessera.client.types import Job, JobEvent, Node
from tessera.common.errors import Unavailable
from tessera.common.retry import RETRYABLE_CODES
from tessera.common.rpc import translate_rpc_errors
from tessera.v1 import (
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

__all__ = ["AsyncClient"]

R = TypeVar("R")


def _with_token(details: Any, token: str) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), ("authorization", f"Bearer {token}"))
    return details._replace(metadata=metadata)


# grpc.aio files each interceptor under the first call kind it implements, so one class per kind.
class _UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds ``authorization: Bearer <token>`` to unary calls."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)


class _StreamBearer(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Adds ``authorization: Bearer <token>`` to server-streaming calls."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self._token), request)


class AsyncClient:
    """Like ``Client``, with ``async`` methods and an async ``watch``; use ``async with``."""

    def __init__(
        self,
        scheduler: str = "127.0.0.1:50052",
        *,
        registry: str = "127.0.0.1:50051",
        aggregator: str | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe default
        timeout: float = 30.0,
        token: str | None = None,
    ) -> None:
        self._addresses = (scheduler, registry, aggregator)
        self._token = token or os.environ.get("TESSERA_TOKEN") or None
        interceptors: Any = (
            [_UnaryBearer(self._token), _StreamBearer(self._token)] if self._token else None
        )
        self._scheduler_channel = grpc.aio.insecure_channel(scheduler, interceptors=interceptors)
        self._registry_channel = grpc.aio.insecure_channel(registry, interceptors=interceptors)
        self._scheduler: Any = scheduler_pb2_grpc.SchedulerStub(self._scheduler_channel)
        self._registry: Any = registry_pb2_grpc.RegistryStub(self._registry_channel)
        self._retry = retry
        self._timeout = timeout

    async def _call(self, fn: Callable[..., Awaitable[R]], request: object) -> R:
        backoff = self._retry.backoff()
        give_up_at = time.monotonic() + self._retry.patience
        for attempt in range(self._retry.attempts):
            try:
                return await fn(request, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                final = attempt == self._retry.attempts - 1 or time.monotonic() >= give_up_at
                if exc.code() not in RETRYABLE_CODES or final:
                    with translate_rpc_errors():
                        raise
            await asyncio.sleep(backoff.next_delay())
        raise Unavailable(f"gave up after {self._retry.attempts} attempts")

    async def submit(self, spec: JobConfig | common_pb2.JobSpec) -> str:
        """Submit a job; return its id. Raises as ``Client.submit``."""
        proto = spec.to_proto() if isinstance(spec, JobConfig) else spec
        response = await self._call(
            self._scheduler.SubmitJob, scheduler_pb2.SubmitJobRequest(spec=proto)
        )
        job_id: str = response.job_id
        return job_id

    async def get_job(self, job_id: str) -> Job:
        """The job's record. Raises ``NotFound``."""
        job = await self._call(self._scheduler.GetJob, scheduler_pb2.GetJobRequest(job_id=job_id))
        return Job.from_proto(job)

    async def list_jobs(self) -> list[Job]:
        """Every job, oldest first."""
        response = await self._call(self._scheduler.ListJobs, scheduler_pb2.ListJobsRequest())
        return [Job.from_proto(j) for j in response.jobs]

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job. Raises ``NotFound``."""
        job = await self._call(
            self._scheduler.CancelJob, scheduler_pb2.CancelJobRequest(job_id=job_id)
        )
        return Job.from_proto(job)

    async def list_nodes(self) -> list[Node]:
        """Live volunteer nodes."""
        response = await self._call(self._registry.ListNodes, registry_pb2.ListNodesRequest())
        return [Node.from_proto(n) for n in response.nodes]

    async def watch(self, job_id: str) -> AsyncIterator[JobEvent]:
        """A snapshot event, then progress events until the job ends (reconnects on failure)."""
        resume = WatchResume(self._retry)
        while True:
            try:
                with translate_rpc_errors():
                    stream = self._scheduler.WatchJob(scheduler_pb2.WatchJobRequest(job_id=job_id))
                    async for raw in stream:
                        event = resume.fresh(raw)
                        if event is not None:
                            yield event
                return
            except Unavailable:
                if resume.give_up():
                    raise
                await asyncio.sleep(resume.backoff.next_delay())

    async def download_model(self, job_id: str, path: str | Path) -> ModelFile:
        """Save the job's latest model as safetensors (runs the sync client in a thread)."""
        scheduler, registry, aggregator = self._addresses

        def download() -> ModelFile:
            with Client(
                scheduler, registry=registry, aggregator=aggregator, token=self._token
            ) as client:
                return client.download_model(job_id, path)

        return await asyncio.to_thread(download)

    async def close(self) -> None:
        """Close the channels."""
        await self._scheduler_channel.close(None)
        await self._registry_channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
