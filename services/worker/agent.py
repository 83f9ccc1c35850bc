"""The worker agent: register, heartbeat, take tasks, train, push, report (all outbound)."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from prometheus_client import Counter

from services.worker.benchmark import measure_throughput
from services.worker.config import WorkerConfig
from services.worker.heartbeat import HeartbeatSender
from services.worker.trainer import Trainer
from tessera.common.auth import NodeSigner
from tessera.common.channels import open_channel
from tessera.common.client_auth import TokenSource, with_credentials
from tessera.common.errors import NotFound, TesseraError, Unavailable
from tessera.common.retry import Backoff
from tessera.common.rpc import call_with_retry, translate_rpc_errors
from tessera.ml.datasets import load_dataset
from tessera.v1 import (
    aggregator_pb2,
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from tessera.wire.codecs import ErrorFeedback, get_codec
from tessera.wire.frames import CHUNK_BYTES, EncodedTensors, bytes_by_codec, encode_tensors
from tessera.wire.stream import (
    assemble,
    chunk_frames,
    chunks_after_header,
    frame_parser,
    metas_from_specs,
    specs_from_metas,
)

__all__ = ["WorkerAgent"]

log = logging.getLogger(__name__)

TASKS = Counter("tessera_worker_tasks_total", "Tasks finished by this worker", ["outcome"])
BYTES_SENT = Counter(
    "tessera_worker_bytes_sent_total",
    "Gradient payload bytes handed to gRPC, as encoded on the wire, by codec",
    ["codec"],
)

# Largest model a worker accepts; the table is refused before anything is allocated.
_MAX_MODEL_BYTES = 2 * 1024**3
# Error-feedback residuals are kept for this many jobs (the most recently pushed to).
_FEEDBACK_JOBS = 4
# A push's deadline assumes at least this rate, so big gradients on slow links are not cut off.
_MIN_BYTES_PER_SECOND = 1 << 20
# A model's size is unknown until its header arrives; keepalives detect dead connections.
_MODEL_DEADLINE_SECONDS = 600.0
_SERVICE = aggregator_pb2.DESCRIPTOR.services_by_name["Aggregator"]
# How long a task waits for an unreachable aggregator (a restart) before it fails.
_AGGREGATOR_PATIENCE = 30.0


@dataclass
class _AggregatorLink:
    """One aggregator's channel and the calls a worker makes on it.

    ``push`` sends already serialised ``GradientFrame``s (``chunk_frames`` writes each chunk's
    frame in one copy); ``push_small`` sends a payload of at most one chunk in one message
    instead, when the aggregator has that RPC. ``get_model`` yields chunks as views of the
    received messages (``frame_parser``). The generated stubs would copy each chunk two more
    times.
    """

    push: grpc.StreamUnaryMultiCallable[bytes, aggregator_pb2.PushReceipt]
    push_small: grpc.UnaryUnaryMultiCallable[
        aggregator_pb2.SmallGradient, aggregator_pb2.PushReceipt
    ]
    get_model: grpc.UnaryStreamMultiCallable[aggregator_pb2.GetModelRequest, Any]
    # False once the aggregator answered PushSmallGradient with UNIMPLEMENTED (an older version).
    takes_small_pushes: bool = True

    @classmethod
    def open(
        cls,
        address: str,
        tls: grpc.ChannelCredentials | None = None,
        credential: TokenSource | None = None,
    ) -> _AggregatorLink:
        channel = with_credentials(open_channel(address, tls), credential)
        path = f"/{_SERVICE.full_name}/"
        return cls(
            push=channel.stream_unary(
                path + "PushGradient",
                request_serializer=None,
                response_deserializer=aggregator_pb2.PushReceipt.FromString,
            ),
            push_small=channel.unary_unary(
                path + "PushSmallGradient",
                request_serializer=aggregator_pb2.SmallGradient.SerializeToString,
                response_deserializer=aggregator_pb2.PushReceipt.FromString,
            ),
            get_model=channel.unary_stream(
                path + "GetModel",
                request_serializer=aggregator_pb2.GetModelRequest.SerializeToString,
                response_deserializer=frame_parser(aggregator_pb2.ModelFrame.FromString),
            ),
        )


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class WorkerAgent:
    """One volunteer node. ``run()`` blocks until ``stop()``."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._stop = threading.Event()
        self._signer: NodeSigner | None = None
        tls = config.common.channel_credentials()
        self._registry = registry_pb2_grpc.RegistryStub(
            with_credentials(open_channel(config.registry, tls), self._credential)
        )
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(
            with_credentials(open_channel(config.scheduler, tls), self._credential)
        )
        self._aggregators: dict[str, _AggregatorLink] = {}
        self._trainer = Trainer(slowdown=config.slowdown, local_dir=config.local_data)
        self._feedback: OrderedDict[str, ErrorFeedback] = OrderedDict()
        self._call: Any = None
        self._lock = threading.Lock()
        self._running_tasks = 0
        self._completed_tasks = 0
        self.node_id = ""

    def _credential(self, method: str) -> str | None:
        """The join token to register; afterwards a fresh signed proof for every call."""
        if method.endswith("/Register"):
            return self._config.join_token or None
        signer = self._signer
        return signer.proof(method) if signer is not None else None

    def stop(self) -> None:
        """Stop taking tasks, deregister and return from ``run``."""
        self._stop.set()
        self._cancel_stream()

    def _cancel_stream(self) -> None:
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def run(self) -> None:
        """Register, then serve tasks; register again whenever the lease is lost."""
        torch.set_num_threads(self._config.torch_threads)
        load_dataset("digits")  # warm the cache before the first task's clock starts
        profile = common_pb2.NodeProfile(
            hostname=self._config.name or socket.gethostname(),
            cpu_cores=os.cpu_count() or 1,
            memory_bytes=_memory_bytes(),
            throughput=measure_throughput(slowdown=self._config.slowdown),
            local_datasets=self._config.local_datasets(),
        )
        while not self._stop.is_set():
            try:
                response = call_with_retry(
                    lambda: self._registry.Register(
                        registry_pb2.RegisterRequest(profile=profile), timeout=10
                    ),
                    stop=self._stop,
                    attempts=1_000_000,
                    backoff=Backoff(initial=0.1, maximum=5.0),
                )
            except TesseraError as exc:
                if self._stop.is_set():
                    break
                log.error("registration refused: %s", exc)
                raise
            self.node_id = response.node_id
            self._signer = (
                NodeSigner(response.node_id, response.node_secret) if response.node_secret else None
            )
            log.info("registered as node %s (%.0f samples/s)", self.node_id, profile.throughput)
            lost = threading.Event()
            heartbeat = HeartbeatSender(
                self._beat, response.heartbeat_interval_seconds, functools.partial(self._lose, lost)
            )
            heartbeat.start()
            try:
                self._task_loop(lost)
            finally:
                heartbeat.stop()
        self._deregister()

    def _lose(self, lost: threading.Event) -> None:
        lost.set()
        self._cancel_stream()

    def _beat(self) -> None:
        with self._lock:
            load = common_pb2.NodeLoad(
                running_tasks=self._running_tasks, completed_tasks=self._completed_tasks
            )
        request = registry_pb2.HeartbeatRequest(node_id=self.node_id, load=load)
        with translate_rpc_errors():
            self._registry.Heartbeat(request, timeout=5)

    def _deregister(self) -> None:
        if not self.node_id:
            return
        try:
            with translate_rpc_errors():
                self._registry.Deregister(
                    registry_pb2.DeregisterRequest(node_id=self.node_id), timeout=2
                )
        except TesseraError as exc:
            log.info("deregistration skipped: %s", exc)

    def _task_loop(self, lost: threading.Event) -> None:
        backoff = Backoff(initial=0.05, maximum=2.0)
        while not (self._stop.is_set() or lost.is_set()):
            call: Any = self._scheduler.StreamTasks(
                scheduler_pb2.StreamTasksRequest(node_id=self.node_id)
            )
            with self._lock:
                self._call = call
            if self._stop.is_set() or lost.is_set():
                call.cancel()
            try:
                for task in call:
                    self._run_task(task)
                    backoff.reset()
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("scheduler does not know this node; registering again")
                    return
                if exc.code() != grpc.StatusCode.CANCELLED:
                    log.warning("task stream broke (%s); reconnecting", exc.code().name)
            if backoff.wait(self._stop):
                return

    def _aggregator(self, address: str) -> _AggregatorLink:
        link = self._aggregators.get(address)
        if link is None:
            link = self._aggregators[address] = _AggregatorLink.open(
                address, self._config.common.channel_credentials(), self._credential
            )
        return link

    def _run_task(self, task: scheduler_pb2.Task) -> None:
        with self._lock:
            self._running_tasks += 1
        outcome = scheduler_pb2.TASK_OUTCOME_SUCCEEDED
        message = ""
        seconds = 0.0
        samples = 0
        try:
            aggregator = self._aggregator(task.aggregator_address)
            base_version, weights = self._fetch_model_patiently(aggregator, task)
            contribution = self._trainer.compute(
                task.job_id, task.spec, weights, task.round, task.task_index, task.num_tasks
            )
            seconds, samples = contribution.seconds, contribution.samples
            receipt = self._push(
                aggregator, task, base_version, contribution.gradient, samples, contribution.loss
            )
            if receipt.status == aggregator_pb2.RECEIPT_STATUS_REJECTED:
                outcome, message = scheduler_pb2.TASK_OUTCOME_FAILED, receipt.reason
        except TesseraError as exc:
            outcome, message = scheduler_pb2.TASK_OUTCOME_FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - a bad task must not take the worker down
            log.exception("task %s/%s crashed", task.round, task.task_index)
            outcome, message = scheduler_pb2.TASK_OUTCOME_FAILED, f"worker error: {exc!r}"[:500]
        finally:
            with self._lock:
                self._running_tasks -= 1
                self._completed_tasks += 1
        TASKS.labels(
            "succeeded" if outcome == scheduler_pb2.TASK_OUTCOME_SUCCEEDED else "failed"
        ).inc()
        self._report(task, outcome, message, seconds, samples)

    def _fetch_model_patiently(
        self, aggregator: _AggregatorLink, task: scheduler_pb2.Task
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """The task's model: the one sent along with it, else ``_fetch_model``.

        Fetching retries for up to ``_AGGREGATOR_PATIENCE`` seconds, so that a brief
        aggregator outage does not use up the task's attempts.
        """
        if task.model_payload and task.spec.mode != "async":
            try:
                metas = metas_from_specs(task.model_tensors)
                assembler = assemble(metas, [task.model_payload], max_bytes=_MAX_MODEL_BYTES)
                return int(task.model_version), assembler.tensors()
            except TesseraError as exc:
                log.warning(
                    "model sent with task %s/%s unusable (%s); fetching it",
                    task.round,
                    task.task_index,
                    exc,
                )
        give_up_at = time.monotonic() + _AGGREGATOR_PATIENCE
        backoff = Backoff(initial=0.1, maximum=2.0)
        while True:
            try:
                return self._fetch_model(aggregator, task)
            except Unavailable:
                if time.monotonic() >= give_up_at or backoff.wait(self._stop):
                    raise

    def _fetch_model(
        self, aggregator: _AggregatorLink, task: scheduler_pb2.Task
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """The task's model version and weights; in "async" mode the latest version."""
        version = 0 if task.spec.mode == "async" else task.model_version
        request = aggregator_pb2.GetModelRequest(job_id=task.job_id, version=version)
        with translate_rpc_errors():
            frames = iter(aggregator.get_model(request, timeout=_MODEL_DEADLINE_SECONDS))
            first = next(frames, None)
            if first is None or isinstance(first, memoryview):
                raise NotFound("model stream carried no header")
            metas = metas_from_specs(first.header.tensors)
            assembler = assemble(metas, chunks_after_header(frames), max_bytes=_MAX_MODEL_BYTES)
        return int(first.header.version), assembler.tensors()

    def _feedback_for(self, job_id: str, codec: str) -> ErrorFeedback | None:
        """The job's error-feedback residuals if its codec is lossy (kept for recent jobs)."""
        if codec == "none":
            return None
        feedback = self._feedback.get(job_id)
        if feedback is None:
            feedback = self._feedback[job_id] = ErrorFeedback()
            while len(self._feedback) > _FEEDBACK_JOBS:
                self._feedback.popitem(last=False)
        self._feedback.move_to_end(job_id)
        return feedback

    def _push(
        self,
        aggregator: _AggregatorLink,
        task: scheduler_pb2.Task,
        base_version: int,
        gradient: dict[str, torch.Tensor],
        samples: int,
        loss: float,
    ) -> aggregator_pb2.PushReceipt:
        """Encode the gradient with the job's codec and send it; return the receipt.

        A payload of at most one chunk goes in one ``PushSmallGradient`` message, a larger one
        as a ``PushGradient`` stream.

        With a lossy codec the gradient goes through the job's ``ErrorFeedback``: what the
        codec drops is kept and added to the next round's gradient. The residual moves on
        unless the aggregator certainly did not count the payload (a REJECTED receipt or a
        failed push); then it is restored, since the task's gradient will be sent again (or
        never counts) and must not also survive in the residual. A DUPLICATE means the task's
        contribution was counted, this one's or an identical one's.
        """
        codec = task.spec.codec or "none"
        feedback = self._feedback_for(task.job_id, codec)
        encoded = encode_tensors(gradient, codec, feedback=feedback)
        header = aggregator_pb2.ContributionHeader(
            job_id=task.job_id,
            round=task.round,
            task_index=task.task_index,
            node_id=self.node_id,
            base_version=base_version,
            samples=samples,
            loss=loss,
            tensors=specs_from_metas(encoded.metas),
            ticket=task.ticket,
        )
        sent: list[int] = []  # payload bytes sent by each attempt
        deadline = 60 + encoded.total_bytes / _MIN_BYTES_PER_SECOND
        # One message when it fits: a client stream costs a thread per call in gRPC Python.
        small = (
            aggregator_pb2.SmallGradient(header=header, payload=b"".join(encoded.payloads))
            if encoded.total_bytes <= CHUNK_BYTES and aggregator.takes_small_pushes
            else None
        )

        def frames() -> Iterator[bytes]:
            sent.append(0)
            yield aggregator_pb2.GradientFrame(header=header).SerializeToString()
            for frame in chunk_frames(encoded.payloads, CHUNK_BYTES):
                yield frame
                # Runs when gRPC asks for the next frame, i.e. once this one has been sent.
                sent[-1] += min(CHUNK_BYTES, encoded.total_bytes - sent[-1])

        def send() -> aggregator_pb2.PushReceipt:
            if small is not None and aggregator.takes_small_pushes:
                sent.append(encoded.total_bytes)
                try:
                    return aggregator.push_small(small, timeout=deadline)
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                # An aggregator older than PushSmallGradient: stream to it from now on.
                sent.pop()
                aggregator.takes_small_pushes = False
                log.info("aggregator %s takes streamed pushes only", task.aggregator_address)
            return aggregator.push(frames(), timeout=deadline)

        def attempt() -> aggregator_pb2.PushReceipt:
            try:
                receipt: aggregator_pb2.PushReceipt = send()
            except grpc.RpcError as exc:
                # The aggregator's payload limit is final for this contribution: no retries.
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    with translate_rpc_errors():
                        raise
                raise
            return receipt

        try:
            receipt = call_with_retry(attempt, stop=self._stop)
        except TesseraError:
            if feedback is not None:
                _restore_residuals(feedback, encoded, gradient)
            raise
        finally:
            for sent_bytes in sent:
                for used, count in bytes_by_codec(encoded.metas, sent_bytes).items():
                    BYTES_SENT.labels(used).inc(count)
        if feedback is not None and receipt.status == aggregator_pb2.RECEIPT_STATUS_REJECTED:
            _restore_residuals(feedback, encoded, gradient)
        return receipt

    def _report(
        self,
        task: scheduler_pb2.Task,
        outcome: scheduler_pb2.TaskOutcome.ValueType,
        message: str,
        seconds: float,
        samples: int,
    ) -> None:
        request = scheduler_pb2.ReportTaskRequest(
            node_id=self.node_id,
            job_id=task.job_id,
            round=task.round,
            task_index=task.task_index,
            outcome=outcome,
            message=message,
            compute_seconds=seconds,
            samples=samples,
        )
        try:
            call_with_retry(
                lambda: self._scheduler.ReportTask(request, timeout=10), stop=self._stop
            )
        except TesseraError as exc:
            log.warning("report of task %s/%s dropped: %s", task.round, task.task_index, exc)


def _restore_residuals(
    feedback: ErrorFeedback, encoded: EncodedTensors, gradient: dict[str, torch.Tensor]
) -> None:
    """Undo ``feedback.compress`` for a push that did not count.

    ``compress`` left ``e' = g + e - decode(payload)``, so ``e = e' + decode(payload) - g``.
    """
    for meta, payload in zip(encoded.metas, encoded.payloads, strict=True):
        residual = feedback.residual(meta.name)
        if meta.codec == "none" or residual is None:
            continue
        decoded = get_codec(meta.codec).decode(payload, meta.dtype, meta.shape)
        residual.add_(decoded).sub_(gradient[meta.name])
