"""Tessera: train machine-learning models on compute that volunteers lend.

Packages:
    client: the typed Python SDK (``tessera.Client``).
    cli: the ``tessera`` command (``up``, ``submit``, ``watch``, ``schedule``, ...).
    common: shared server, etcd and error helpers used by every service.
    wire: tensor stream framing and codecs (pure, no gRPC).
    ml: the vetted model zoo and data sets (pure torch).
    v1: generated protobuf/gRPC modules.
"""

from tessera.client import (
    AsyncClient,
    Client,
    EventKind,
    Job,
    JobConfig,
    JobEvent,
    JobHandle,
    JobState,
    Node,
    RetryPolicy,
    RoundMetrics,
)
from tessera.common.errors import (
    Conflict,
    InvalidSpec,
    NotFound,
    QuotaExceeded,
    TesseraError,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "EventKind",
    "InvalidSpec",
    "Job",
    "JobConfig",
    "JobEvent",
    "JobHandle",
    "JobState",
    "Node",
    "NotFound",
    "QuotaExceeded",
    "RetryPolicy",
    "RoundMetrics",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
]
