"""The Python SDK.

Modules:
    client: ``Client``, the typed synchronous client, and ``JobHandle``.
    aio: ``AsyncClient``, its asyncio twin.
    jobs: ``JobConfig``, a job spec as a dataclass (to proto and JSON).
    types: ``Job``, ``JobEvent``, ``RoundMetrics``, ``Node``: typed results.
    models: model downloads to safetensors.
"""

from tessera.client.aio import AsyncClient
from tessera.client.client import Client, JobHandle, RetryPolicy
from tessera.client.jobs import JobConfig
from tessera.client.models import ModelFile, load_model
from tessera.client.types import EventKind, Job, JobEvent, JobState, Node, RoundMetrics

__all__ = [
    "AsyncClient",
    "Client",
    "EventKind",
    "Job",
    "JobConfig",
    "JobEvent",
    "JobHandle",
    "JobState",
    "ModelFile",
    "Node",
    "RetryPolicy",
    "RoundMetrics",
    "load_model",
]
