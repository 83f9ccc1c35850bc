"""gRPC adapter of the aggregator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from services.aggregator.handlers import Aggregator
from tessera.v1 import aggregator_pb2, aggregator_pb2_grpc
from tessera.wire.stream import frame_parser

__all__ = ["SERVICE", "AggregatorServicer", "add_aggregator_servicer", "aggregator_handlers"]

SERVICE = aggregator_pb2.DESCRIPTOR.services_by_name["Aggregator"]


class AggregatorServicer(aggregator_pb2_grpc.AggregatorServicer):
    """OpenJob, PushGradient, PushSmallGradient, GetModel, CloseRound, CloseJob."""

    def __init__(self, aggregator: Aggregator) -> None:
        self._aggregator = aggregator

    def OpenJob(  # noqa: D102, N802 - names fixed by the proto
        self, request: aggregator_pb2.OpenJobRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.OpenJobResponse:
        version, round_index = self._aggregator.open_job(request.job_id, request.spec)
        return aggregator_pb2.OpenJobResponse(model_version=version, round=round_index)

    def PushGradient(  # noqa: D102, N802
        self,
        request_iterator: Iterator[aggregator_pb2.GradientFrame],
        context: grpc.ServicerContext,
    ) -> aggregator_pb2.PushReceipt:
        return self._aggregator.push(iter(request_iterator))

    def PushSmallGradient(  # noqa: D102, N802
        self, request: aggregator_pb2.SmallGradient, context: grpc.ServicerContext
    ) -> aggregator_pb2.PushReceipt:
        return self._aggregator.push_small(request)

    def GetModel(  # noqa: D102, N802
        self, request: aggregator_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> Iterator[aggregator_pb2.ModelFrame]:
        return self._aggregator.model_frames(request.job_id, request.version)

    def CloseRound(  # noqa: D102, N802
        self, request: aggregator_pb2.CloseRoundRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.CloseRoundResponse:
        return self._aggregator.close_round(
            request.job_id, request.round, request.num_tasks, request.model_max_bytes
        )

    def CloseJob(  # noqa: D102, N802
        self, request: aggregator_pb2.CloseJobRequest, context: grpc.ServicerContext
    ) -> aggregator_pb2.CloseJobResponse:
        self._aggregator.close_job(request.job_id)
        return aggregator_pb2.CloseJobResponse()


def add_aggregator_servicer(servicer: AggregatorServicer, server: grpc.Server) -> None:
    """Register ``servicer`` with the handlers of ``aggregator_handlers``."""
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, aggregator_handlers(servicer)),)
    )


def aggregator_handlers(servicer: AggregatorServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The generated ``add_AggregatorServicer_to_server``'s handlers, minus copies.

    ``PushGradient`` hands the servicer each chunk as a view into the received message
    (``frame_parser``) rather than through ``GradientFrame.FromString`` and ``.chunk``, two
    copies of every byte; ``GetModel`` may yield frames already serialised (``bytes``). A unit
    test checks that this table names exactly the methods of the proto service.
    """
    pb = aggregator_pb2

    def model_frame(frame: aggregator_pb2.ModelFrame | bytes) -> bytes:
        return frame if isinstance(frame, bytes) else frame.SerializeToString()

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "OpenJob": grpc.unary_unary_rpc_method_handler(
            servicer.OpenJob, pb.OpenJobRequest.FromString, pb.OpenJobResponse.SerializeToString
        ),
        "PushGradient": grpc.stream_unary_rpc_method_handler(
            servicer.PushGradient,
            frame_parser(pb.GradientFrame.FromString),
            pb.PushReceipt.SerializeToString,
        ),
        "PushSmallGradient": grpc.unary_unary_rpc_method_handler(
            servicer.PushSmallGradient,
            pb.SmallGradient.FromString,
            pb.PushReceipt.SerializeToString,
        ),
        "GetModel": grpc.unary_stream_rpc_method_handler(
            servicer.GetModel, pb.GetModelRequest.FromString, model_frame
        ),
        "CloseRound": grpc.unary_unary_rpc_method_handler(
            servicer.CloseRound,
            pb.CloseRoundRequest.FromString,
            pb.CloseRoundResponse.SerializeToString,
        ),
        "CloseJob": grpc.unary_unary_rpc_method_handler(
            servicer.CloseJob, pb.CloseJobRequest.FromString, pb.CloseJobResponse.SerializeToString
        ),
    }
    return handlers
