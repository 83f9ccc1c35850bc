"""gRPC adapter of the aggregator."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from services.aggregator.handlers import Aggregator
from tessera.v1 import aggregator_pb2, aggregator_pb2_grpc, common_pb2

__all__ = ["AggregatorServicer"]


class AggregatorServicer(aggregator_pb2_grpc.AggregatorServicer):
    """OpenJob, PushGradient, GetModel, CloseRound, CloseJob."""

    def __init__(self, aggregator: Aggregator) -> None:
        self._aggregator = aggregator

    def OpenJob(  # noqa: D102, N802 - names fixed by the proto
        self, request: aggregator_pb2.OpenJobRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.OpenJobResponse:
        version = self._aggregator.open_job(request.job_id, request.spec)
        return aggregator_pb2.OpenJobResponse(model_version=version)

    def PushGradient(  # noqa: D102, N802
        self,
        request_iterator: Iterator[aggregator_pb2.GradientFrame],
        context: grpc.ServicerContext,
    ) -> aggregator_pb2.PushReceipt:
        return self._aggregator.push(iter(request_iterator))

    def GetModel(  # noqa: D102, N802
        self, request: aggregator_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> Iterator[aggregator_pb2.ModelFrame]:
        return self._aggregator.model_frames(request.job_id, request.version)

    def CloseRound(  # noqa: D102, N802
        self, request: aggregator_pb2.CloseRoundRequest, context: grpc.ServicerContext
    ) -> common_pb2.RoundMetrics:
        return self._aggregator.close_round(request.job_id, request.round, request.num_tasks)

    def CloseJob(  # noqa: D102, N802
        self, request: aggregator_pb2.CloseJobRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.CloseJobResponse:
        self._aggregator.close_job(request.job_id)
        return aggregator_pb2.CloseJobResponse()
