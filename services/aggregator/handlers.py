"""The aggregator's request handling, between protos and the pure ``JobModel`` (no gRPC).

``push`` is the data plane's receiving end: header checks, then the payload into a recycled
buffer with per-chunk checks, then one exactly-once decision (``services.aggregator.ingest``
describes the design). Every outcome is answered with its reason and counted by kind: a
``PushReceipt`` for decisions about a well-formed contribution, a status code (with the same
ledger entry and metric) for a stream that is too large or malformed.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from google.protobuf import json_format

from services.aggregator.checkpoint import CheckpointDir
from services.aggregator.ledger import Decision, Ledger
from services.aggregator.metrics import (
    BYTES_RECEIVED,
    CONTRIBUTIONS,
    MODEL_BYTES_SENT,
    ROUND_SECONDS,
    record_round,
)
from services.aggregator.models import (
    Contribution,
    JobModel,
    Rejection,
    RoundResult,
    settings_from_spec,
)
from tessera.common.auth import ClusterKey
from tessera.common.errors import InvalidSpec, NotFound, QuotaExceeded
from tessera.common.grpc_auth import require_node
from tessera.common.ids import check_id
from tessera.ml.recipes import Recipe
from tessera.v1 import aggregator_pb2, common_pb2
from tessera.wire.frames import CHUNK_BYTES, encode_tensors, iter_chunks
from tessera.wire.stream import chunks_after_header, metas_from_specs, specs_from_metas

__all__ = ["Aggregator", "round_metrics"]

log = logging.getLogger(__name__)

_RECEIPT = aggregator_pb2.ReceiptStatus


class Aggregator:
    """All jobs held by this aggregator, and the ledger of every contribution."""

    def __init__(
        self,
        *,
        max_payload_bytes: int,
        cluster_key: ClusterKey | None = None,
        checkpoints: CheckpointDir | None = None,
    ) -> None:
        self.ledger = Ledger()
        self._cluster_key = cluster_key
        self._checkpoints = checkpoints
        self._max_payload_bytes = max_payload_bytes
        self._jobs: dict[str, JobModel] = {}
        self._lock = threading.Lock()
        # Closes rounds whose last contribution has just arrived (see ``push``).
        self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="close")

    def job(self, job_id: str) -> JobModel:
        """The job's model.

        Raises:
            NotFound: no such job here.
        """
        check_id(job_id, "job_id")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and self._checkpoints is not None:
            # After a restart, jobs come back from their checkpoints on first use.
            checkpoint = self._checkpoints.load(job_id)
            if checkpoint is not None:
                spec = json_format.ParseDict(checkpoint.spec, common_pb2.JobSpec())
                self.open_job(job_id, spec)
                with self._lock:
                    job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} is not open on this aggregator")
        return job

    def open_job(self, job_id: str, spec: common_pb2.JobSpec) -> tuple[int, int]:
        """Create the job's model at version 0 (idempotent); return (version, open round)."""
        check_id(job_id, "job_id")
        with self._lock:
            existing = self._jobs.get(job_id)
        if existing is not None:
            return existing.version, existing.round
        settings = settings_from_spec(
            spec.model,
            spec.dataset,
            spec.hidden_sizes,
            spec.optimizer,
            spec.learning_rate,
            spec.aggregation,
            spec.tasks_per_round,
            spec.seed,
            aggregation_options=dict(spec.aggregation_options),
            mode=spec.mode,
            max_staleness=spec.max_staleness,
            recipe=Recipe.from_spec(spec),
        )
        job = JobModel(
            job_id,
            settings,
            self.ledger,
            max_payload_bytes=self._max_payload_bytes,
            checkpoints=self._checkpoints,
            spec=json_format.MessageToDict(spec),
            on_round_closed=functools.partial(_export_round, job_id),
        )
        if self._checkpoints is not None:
            checkpoint = self._checkpoints.load(job_id)
            if checkpoint is not None:
                job.restore(checkpoint)
        with self._lock:
            held = self._jobs.setdefault(job_id, job)
            return held.version, held.round

    def close_job(self, job_id: str) -> None:
        """The job is over: free its memory.

        Its last checkpoint is on disk already (each round's is written before the close is
        answered), and it comes back from there when asked for again (a model download, a late
        push that is then refused as stale). Without checkpoints the job stays held: its model
        is nowhere else. Its ledger entries stay either way.
        """
        if self._checkpoints is None:
            return
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is not None:
            job.close()

    def close(self) -> None:
        """Finish the rounds being closed early (at shutdown)."""
        self._closer.shutdown(wait=True)

    def push(
        self, frames: Iterator[aggregator_pb2.GradientFrame | memoryview]
    ) -> aggregator_pb2.PushReceipt:
        """Receive one contribution stream and decide about it.

        ``frames`` come from ``frame_parser``: chunk frames arrive as ``memoryview``s.

        Raises:
            InvalidSpec: the stream is malformed (no header first, bad table, wrong length).
            NotFound: unknown job.
            QuotaExceeded: the payload is larger than allowed.
        """
        first = next(frames, None)
        if (
            not isinstance(first, aggregator_pb2.GradientFrame)
            or first.WhichOneof("frame") != "header"
        ):
            raise InvalidSpec("a gradient stream starts with a ContributionHeader")
        return self.push_contribution(first.header, chunks_after_header(frames))

    def push_small(self, request: aggregator_pb2.SmallGradient) -> aggregator_pb2.PushReceipt:
        """``push`` for a contribution sent whole in one message.

        Raises:
            As ``push``.
        """
        if not request.HasField("header"):
            raise InvalidSpec("a SmallGradient carries a ContributionHeader")
        return self.push_contribution(request.header, iter((request.payload,)))

    def push_contribution(
        self, h: aggregator_pb2.ContributionHeader, chunks: Iterator[bytes | memoryview]
    ) -> aggregator_pb2.PushReceipt:
        """Check a contribution's header, read its payload ``chunks``, and decide about it.

        Raises:
            As ``push``.
        """
        check_id(h.node_id, "node_id")
        check_id(h.job_id, "job_id")
        require_node(h.node_id)
        if self._cluster_key is not None:
            self._cluster_key.check_ticket(h.ticket, h.job_id, h.round, h.task_index, h.node_id)
        job = self.job(h.job_id)
        metas = metas_from_specs(h.tensors)
        c = Contribution(
            h.job_id, h.round, h.task_index, h.node_id, h.base_version, h.samples, h.loss
        )
        # Before the header checks: a contribution already counted is a duplicate even after
        # its round closed (a reassigned task's second push, once the first has closed it).
        if job.is_duplicate(c):
            return self._receipt(Decision.DUPLICATE, 0)
        rejection = job.check_header(c, metas)
        if rejection is not None:
            return self._rejected(job.reject(c, rejection))
        try:
            intake = job.intake(c, metas, max_bytes=self._max_payload_bytes)
        except QuotaExceeded as exc:
            self._count_rejection(job.reject(c, Rejection("too_large", str(exc))))
            raise
        try:
            decision, rejection = job.receive(c, intake, chunks)
        except InvalidSpec as exc:
            self._count_rejection(job.reject(c, Rejection("malformed", str(exc))))
            raise
        finally:
            job.finish(intake)
            for codec, count in intake.assembler.received_by_codec().items():
                BYTES_RECEIVED.labels(codec).inc(count)
        if rejection is not None:
            return self._rejected(rejection)
        if decision is Decision.APPLIED and job.complete(c.round):
            # The scheduler's CloseRound is certain to follow; closing now overlaps the step
            # and evaluation with the workers' reports, and CloseRound gets the stored result.
            self._closer.submit(self._close_early, job, c.round)
        return self._receipt(decision, intake.assembler.received_bytes)

    @staticmethod
    def _close_early(job: JobModel, round_index: int) -> None:
        try:
            job.close_round(round_index, job.settings.tasks_per_round, early=True)
        except Exception:  # noqa: BLE001 - the scheduler's CloseRound meets it and reports it
            log.exception("job %s round %d was not closed early", job.job_id, round_index)

    @staticmethod
    def _receipt(decision: Decision, received: int) -> aggregator_pb2.PushReceipt:
        CONTRIBUTIONS.labels(decision.value, "").inc()
        status = (
            _RECEIPT.RECEIPT_STATUS_ACCEPTED
            if decision is Decision.APPLIED
            else _RECEIPT.RECEIPT_STATUS_DUPLICATE
        )
        return aggregator_pb2.PushReceipt(status=status, bytes_received=received)

    @staticmethod
    def _count_rejection(rejection: Rejection) -> None:
        CONTRIBUTIONS.labels(Decision.REJECTED.value, rejection.kind).inc()

    @classmethod
    def _rejected(cls, rejection: Rejection) -> aggregator_pb2.PushReceipt:
        cls._count_rejection(rejection)
        return aggregator_pb2.PushReceipt(
            status=_RECEIPT.RECEIPT_STATUS_REJECTED, reason=rejection.reason
        )

    def model_frames(self, job_id: str, version: int) -> Iterator[aggregator_pb2.ModelFrame]:
        """Stream a published model version: a header, then payload chunks."""
        version, weights = self.job(job_id).snapshot(version)
        encoded = encode_tensors(weights, "none")
        header = aggregator_pb2.ModelHeader(
            job_id=job_id, version=version, tensors=specs_from_metas(encoded.metas)
        )
        yield aggregator_pb2.ModelFrame(header=header)
        for chunk in iter_chunks(encoded.payloads, CHUNK_BYTES):
            yield aggregator_pb2.ModelFrame(chunk=chunk)
            # Counted once handed to gRPC: a download cut short counts what was sent.
            MODEL_BYTES_SENT.labels("none").inc(len(chunk))

    def close_round(
        self, job_id: str, round_index: int, num_tasks: int, model_max_bytes: int = 0
    ) -> aggregator_pb2.CloseRoundResponse:
        """Aggregate, step, evaluate; see ``JobModel.close_round``.

        The answer carries the new model version too if its payload fits ``model_max_bytes``
        (and the version is still held: in async mode newer ones may have replaced it).
        """
        job = self.job(job_id)
        result = job.close_round(round_index, num_tasks)
        response = aggregator_pb2.CloseRoundResponse(metrics=round_metrics(result))
        if model_max_bytes > 0:
            try:
                version, weights = job.snapshot(result.model_version)
            except NotFound:
                return response
            encoded = encode_tensors(weights, "none")
            if version == result.model_version and encoded.total_bytes <= model_max_bytes:
                response.model_tensors.extend(specs_from_metas(encoded.metas))
                response.model_payload = b"".join(encoded.payloads)
                MODEL_BYTES_SENT.labels("none").inc(encoded.total_bytes)
        return response


def round_metrics(result: RoundResult) -> common_pb2.RoundMetrics:
    """A closed round's result as the protobuf message."""
    return common_pb2.RoundMetrics(
        round=result.round,
        model_version=result.model_version,
        train_loss=result.train_loss,
        test_loss=result.test_loss,
        test_accuracy=result.test_accuracy,
        contributions=result.contributions,
        seconds=result.seconds,
        test_macro_f1=result.test_macro_f1,
        test_perplexity=result.test_perplexity,
        payload_bytes=result.payload_bytes,
    )


def _export_round(job_id: str, result: RoundResult) -> None:
    """Prometheus series of a round that has just closed (once per round)."""
    record_round(job_id, round_metrics(result))
    ROUND_SECONDS.observe(result.seconds)
