"""Typed views of what the services return: plain frozen dataclasses, no protobuf needed."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tessera.client.jobs import JobConfig
from tessera.v1 import common_pb2, scheduler_pb2

__all__ = ["EventKind", "Job", "JobEvent", "JobState", "Node", "RoundMetrics"]


class JobState(enum.Enum):
    """Life of a job."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job will not change any more."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def from_proto(cls, value: int) -> JobState:
        """From ``tessera.v1.JobState`` (unspecified reads as pending)."""
        name = common_pb2.JobState.Name(value).removeprefix("JOB_STATE_")  # type: ignore[arg-type]
        return cls.PENDING if name == "UNSPECIFIED" else cls[name]


class EventKind(enum.Enum):
    """What a progress event reports."""

    SNAPSHOT = "snapshot"
    ROUND_STARTED = "round_started"
    ROUND_COMPLETED = "round_completed"
    TASK_REASSIGNED = "task_reassigned"
    FINISHED = "finished"
    WAITING = "waiting"
    TASKS_DROPPED = "tasks_dropped"

    @classmethod
    def from_proto(cls, value: int) -> EventKind:
        """From ``tessera.v1.JobEventKind``."""
        name = scheduler_pb2.JobEventKind.Name(value)  # type: ignore[arg-type]
        return cls[name.removeprefix("JOB_EVENT_KIND_")]


@dataclass(frozen=True)
class RoundMetrics:
    """Held-out evaluation after a round.

    Attributes:
        round: the round's index, from 0.
        model_version: the model version the round published.
        train_loss: mean training loss of the round's contributions.
        test_loss: held-out loss after the round's update.
        test_accuracy: held-out accuracy (next-byte accuracy for language models).
        contributions: contributions applied in the round.
        seconds: time from the round's opening to its close.
        test_macro_f1: classifiers: unweighted mean of the per-class F1 on the held-out set
            (0 for language models).
        test_perplexity: language models: ``exp(test_loss)`` (0 for classifiers).
        payload_bytes: encoded contribution bytes the aggregator received for the round's
            applied updates.
    """

    round: int
    model_version: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    contributions: int
    seconds: float
    test_macro_f1: float = 0.0
    test_perplexity: float = 0.0
    payload_bytes: int = 0

    @property
    def is_language_model(self) -> bool:
        """Whether these are a language model's metrics (they carry a perplexity)."""
        return self.test_perplexity > 0

    @classmethod
    def from_proto(cls, m: common_pb2.RoundMetrics) -> RoundMetrics:
        """From ``tessera.v1.RoundMetrics``."""
        return cls(
            m.round,
            m.model_version,
            m.train_loss,
            m.test_loss,
            m.test_accuracy,
            m.contributions,
            m.seconds,
            m.test_macro_f1,
            m.test_perplexity,
            m.payload_bytes,
        )


@dataclass(frozen=True)
class Job:
    """A job's record."""

    job_id: str
    spec: JobConfig
    state: JobState
    rounds_completed: int
    model_version: int
    last_metrics: RoundMetrics | None
    message: str
    created_at: float
    finished_at: float

    @classmethod
    def from_proto(cls, job: common_pb2.Job) -> Job:
        """From ``tessera.v1.Job``."""
        return cls(
            job_id=job.job_id,
            spec=JobConfig.from_proto(job.spec),
            state=JobState.from_proto(job.state),
            rounds_completed=job.rounds_completed,
            model_version=job.model_version,
            last_metrics=(
                RoundMetrics.from_proto(job.last_metrics) if job.HasField("last_metrics") else None
            ),
            message=job.message,
            created_at=job.created_at,
            finished_at=job.finished_at,
        )


@dataclass(frozen=True)
class JobEvent:
    """One progress event of ``Client.watch``."""

    kind: EventKind
    job: Job
    round: int
    metrics: RoundMetrics | None
    message: str
    live_nodes: int
    time: float

    @classmethod
    def from_proto(cls, event: scheduler_pb2.JobEvent) -> JobEvent:
        """From ``tessera.v1.JobEvent``."""
        return cls(
            kind=EventKind.from_proto(event.kind),
            job=Job.from_proto(event.job),
            round=event.round,
            metrics=RoundMetrics.from_proto(event.metrics) if event.HasField("metrics") else None,
            message=event.message,
            live_nodes=event.live_nodes,
            time=event.time,
        )


@dataclass(frozen=True)
class Node:
    """A live volunteer node.

    Attributes:
        node_id: the id the registry gave the node.
        hostname: the node's host name.
        cpu_cores: CPU cores it offers.
        memory_bytes: memory it offers.
        gpu_count: GPUs it offers.
        throughput: training samples per second on the reference model.
        running_tasks: tasks it runs now.
        completed_tasks: tasks it completed so far.
        local_datasets: data sets the node holds locally, by name (for ``data_split="local"``).
    """

    node_id: str
    hostname: str
    cpu_cores: int
    memory_bytes: int
    gpu_count: int
    throughput: float
    running_tasks: int
    completed_tasks: int
    local_datasets: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, node: common_pb2.Node) -> Node:
        """From ``tessera.v1.Node``."""
        p = node.profile
        return cls(
            node.node_id,
            p.hostname,
            p.cpu_cores,
            p.memory_bytes,
            p.gpu_count,
            p.throughput,
            node.load.running_tasks,
            node.load.completed_tasks,
            tuple(p.local_datasets),
        )
