"""gRPC adapter of the scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import grpc

from services.scheduler.core import SchedulerCore
from tessera.common.grpc_auth import require_node
from tessera.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc

__all__ = ["SchedulerServicer"]


def _stop_event(context: grpc.ServicerContext, wake: Callable[[], None]) -> threading.Event:
    """An event set when the RPC ends (client gone, deadline, server stop)."""
    stop = threading.Event()

    def on_done() -> None:
        stop.set()
        wake()

    context.add_callback(on_done)
    return stop


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    """SubmitJob, GetJob, ListJobs, WatchJob, CancelJob, GetMetrics, StreamTasks, ReportTask."""

    def __init__(self, core: SchedulerCore) -> None:
        self._core = core

    def SubmitJob(  # noqa: D102, N802 - names fixed by the proto
        self, request: scheduler_pb2.SubmitJobRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.SubmitJobResponse:
        return scheduler_pb2.SubmitJobResponse(job_id=self._core.submit(request.spec))

    def GetJob(  # noqa: D102, N802
        self, request: scheduler_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> common_pb2.Job:
        return self._core.get(request.job_id)

    def ListJobs(  # noqa: D102, N802
        self, request: scheduler_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.ListJobsResponse:
        return scheduler_pb2.ListJobsResponse(jobs=self._core.list_jobs())

    def WatchJob(  # noqa: D102, N802
        self, request: scheduler_pb2.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[scheduler_pb2.JobEvent]:
        stop = _stop_event(context, lambda: self._core.wake_watchers(request.job_id))
        return self._core.watch(request.job_id, stop)

    def CancelJob(  # noqa: D102, N802
        self, request: scheduler_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> common_pb2.Job:
        return self._core.cancel(request.job_id)

    def GetMetrics(  # noqa: D102, N802
        self, request: scheduler_pb2.GetMetricsRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.GetMetricsResponse:
        return scheduler_pb2.GetMetricsResponse(rounds=self._core.metrics(request.job_id))

    def StreamTasks(  # noqa: D102, N802
        self, request: scheduler_pb2.StreamTasksRequest, context: grpc.ServicerContext
    ) -> Iterator[scheduler_pb2.Task]:
        require_node(request.node_id)
        stop = _stop_event(context, self._core.dispatcher.wake)
        return self._core.stream_tasks(request.node_id, stop)

    def ReportTask(  # noqa: D102, N802
        self, request: scheduler_pb2.ReportTaskRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.ReportTaskResponse:
        require_node(request.node_id)
        return scheduler_pb2.ReportTaskResponse(accepted=self._core.report(request))
