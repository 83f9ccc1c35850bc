"""The scheduler's gRPC client of the aggregator."""

from __future__ import annotations

import threading

import grpc

from tessera.common.channels import open_channel
from tessera.common.client_auth import with_credentials
from tessera.common.rpc import call_with_retry
from tessera.v1 import aggregator_pb2, aggregator_pb2_grpc, common_pb2

__all__ = ["AggregatorClient"]


class AggregatorClient:
    """Opens jobs and closes rounds on one aggregator, retrying transient failures."""

    def __init__(
        self,
        address: str,
        *,
        stop: threading.Event | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> None:
        self.address = address
        self._channel = open_channel(address, credentials)
        channel = with_credentials(self._channel, (lambda _method: token) if token else None)
        self._stub = aggregator_pb2_grpc.AggregatorStub(channel)
        self._stop = stop or threading.Event()

    def open_job(self, job_id: str, spec: common_pb2.JobSpec) -> tuple[int, int]:
        """Create the job's model (idempotent); return its (current version, round to run).

        Raises:
            InvalidSpec: the aggregator rejects the spec (unknown model, dataset, ...).
            Unavailable: the aggregator cannot be reached.
        """
        request = aggregator_pb2.OpenJobRequest(job_id=job_id, spec=spec)
        response = call_with_retry(lambda: self._stub.OpenJob(request, timeout=60), stop=self._stop)
        return int(response.model_version), int(response.round)

    def close_round(
        self, job_id: str, round_index: int, num_tasks: int, model_max_bytes: int = 0
    ) -> aggregator_pb2.CloseRoundResponse:
        """Aggregate, step and evaluate the round (safe to retry).

        The answer carries the new model too if its payload has at most ``model_max_bytes``.

        Raises:
            Conflict: the aggregator does not hold every contribution of the round.
            Unavailable: the aggregator cannot be reached.
        """
        request = aggregator_pb2.CloseRoundRequest(
            job_id=job_id, round=round_index, num_tasks=num_tasks, model_max_bytes=model_max_bytes
        )
        response: aggregator_pb2.CloseRoundResponse = call_with_retry(
            lambda: self._stub.CloseRound(request, timeout=60), stop=self._stop
        )
        return response

    def close_job(self, job_id: str) -> None:
        """Tell the aggregator the job is over, so that it frees the job's memory.

        Raises:
            Unavailable: the aggregator cannot be reached.
        """
        request = aggregator_pb2.CloseJobRequest(job_id=job_id)
        # Short patience: a job's end is not held up for long by an aggregator that is down.
        call_with_retry(
            lambda: self._stub.CloseJob(request, timeout=10), stop=self._stop, patience=5.0
        )

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()
