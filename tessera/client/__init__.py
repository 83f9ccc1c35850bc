"""The Python SDK.

Modules:
    client: ``Client``, a typed, context-managed client of a Tessera cluster.
    jobs: ``JobSpecBuilder``-free helpers: spec dataclass to proto and JSON.
"""

from tessera.client.client import Client, JobHandle
from tessera.client.jobs import JobConfig

__all__ = ["Client", "JobConfig", "JobHandle"]
