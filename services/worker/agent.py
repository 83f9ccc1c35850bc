"""The worker agent: register, heartbeat, take tasks, train, push, report (all outbound)."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import torch
from prometheus_client import Counter

from services.worker.benchmark import measure_throughput
from services.worker.config import WorkerConfig
from services.worker.heartbeat import HeartbeatSender
from services.worker.trainer import Trainer
from tessera.common.errors import NotFound, TesseraError
from tessera.common.retry import Backoff
from tessera.common.rpc import call_with_retry, translate_rpc_errors
from tessera.ml.datasets import load_dataset
from tessera.v1 import (
    aggregator_pb2,
    aggregator_pb2_grpc,
    common_pb2,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from tessera.wire.frames import encode_tensors, iter_chunks
from tessera.wire.stream import assemble, chunks_after_header, metas_from_specs, specs_from_metas

__all__ = ["WorkerAgent"]

log = logging.getLogger(__name__)

TASKS = Counter("tessera_worker_tasks_total", "Tasks finished by this worker", ["outcome"])
BYTES_SENT = Counter("tessera_worker_bytes_sent_total", "Gradient payload bytes sent", ["codec"])

_MAX_MODEL_BYTES = 2 * 1024**3


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
        self._registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(config.registry))
        self._scheduler = scheduler_pb2_grpc.SchedulerStub(grpc.insecure_channel(config.scheduler))
        self._aggregators: dict[str, aggregator_pb2_grpc.AggregatorStub] = {}
        self._trainer = Trainer(slowdown=config.slowdown)
        self._call: Any = None
        self._lock = threading.Lock()
        self._running_tasks = 0
        self._completed_tasks = 0
        self.node_id = ""

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

    def _aggregator(self, address: str) -> aggregator_pb2_grpc.AggregatorStub:
        stub = self._aggregators.get(address)
        if stub is None:
            channel = grpc.insecure_channel(address)
            stub = aggregator_pb2_grpc.AggregatorStub(channel)
            self._aggregators[address] = stub
        return stub

    def _run_task(self, task: scheduler_pb2.Task) -> None:
        with self._lock:
            self._running_tasks += 1
        outcome = scheduler_pb2.TASK_OUTCOME_SUCCEEDED
        message = ""
        seconds = 0.0
        samples = 0
        try:
            aggregator = self._aggregator(task.aggregator_address)
            weights = self._fetch_model(aggregator, task)
            contribution = self._trainer.compute(
                task.job_id, task.spec, weights, task.round, task.task_index, task.num_tasks
            )
            seconds, samples = contribution.seconds, contribution.samples
            receipt = self._push(
                aggregator, task, contribution.gradient, samples, contribution.loss
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

    def _fetch_model(
        self, aggregator: aggregator_pb2_grpc.AggregatorStub, task: scheduler_pb2.Task
    ) -> dict[str, torch.Tensor]:
        request = aggregator_pb2.GetModelRequest(job_id=task.job_id, version=task.model_version)
        with translate_rpc_errors():
            frames = iter(aggregator.GetModel(request, timeout=60))
            first = next(frames, None)
            if first is None or first.WhichOneof("frame") != "header":
                raise NotFound("model stream carried no header")
            metas = metas_from_specs(first.header.tensors)
            assembler = assemble(metas, chunks_after_header(frames), max_bytes=_MAX_MODEL_BYTES)
        return assembler.tensors()

    def _push(
        self,
        aggregator: aggregator_pb2_grpc.AggregatorStub,
        task: scheduler_pb2.Task,
        gradient: dict[str, torch.Tensor],
        samples: int,
        loss: float,
    ) -> aggregator_pb2.PushReceipt:
        codec = task.spec.codec or "none"
        encoded = encode_tensors(gradient, codec)
        header = aggregator_pb2.ContributionHeader(
            job_id=task.job_id,
            round=task.round,
            task_index=task.task_index,
            node_id=self.node_id,
            base_version=task.model_version,
            samples=samples,
            loss=loss,
            tensors=specs_from_metas(encoded.metas),
        )

        def frames() -> Iterator[aggregator_pb2.GradientFrame]:
            yield aggregator_pb2.GradientFrame(header=header)
            for chunk in iter_chunks(encoded.payloads):
                yield aggregator_pb2.GradientFrame(chunk=chunk)

        receipt: aggregator_pb2.PushReceipt = call_with_retry(
            lambda: aggregator.PushGradient(frames(), timeout=120), stop=self._stop
        )
        BYTES_SENT.labels(codec).inc(encoded.total_bytes)
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
