"""The etcd key schema; every key Tessera writes is built here.

Layout under a configurable prefix (default ``/tessera``)::

    nodes/<node-id>                    lease-bound node record (profile, load, lease id)
    jobs/<job-id>                      job record (spec, state, progress)
    tasks/<job-id>/<round>/<task>      task assignment and state
    metrics/<job-id>/<round>           the round's held-out metrics
    election/scheduler                 lease-bound: the leading scheduler's address
    aggregators/<id>                   lease-bound aggregator endpoint

Tasks live beside jobs rather than under them so that listing jobs reads job records only.
"""

from __future__ import annotations

from dataclasses import dataclass

from tessera.common.errors import InvalidSpec

__all__ = ["KeySchema"]


@dataclass(frozen=True)
class KeySchema:
    """Builds keys under ``prefix``.

    Raises:
        InvalidSpec: the prefix does not start with '/' or ends with one.
    """

    prefix: str = "/tessera"

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise InvalidSpec(
                f"etcd prefix {self.prefix!r} must start with '/' and not end with one"
            )

    @property
    def nodes(self) -> str:
        """Prefix of all node records."""
        return f"{self.prefix}/nodes/"

    def node(self, node_id: str) -> str:
        """Key of one node record."""
        return f"{self.nodes}{node_id}"

    @property
    def jobs(self) -> str:
        """Prefix of all job records."""
        return f"{self.prefix}/jobs/"

    def job(self, job_id: str) -> str:
        """Key of one job record."""
        return f"{self.jobs}{job_id}"

    def tasks(self, job_id: str, round_index: int | None = None) -> str:
        """Prefix of a job's task records, or of one round's."""
        base = f"{self.prefix}/tasks/{job_id}/"
        return base if round_index is None else f"{base}{round_index:08d}/"

    def task(self, job_id: str, round_index: int, task_index: int) -> str:
        """Key of one task record."""
        return f"{self.tasks(job_id, round_index)}{task_index:06d}"

    def metrics(self, job_id: str) -> str:
        """Prefix of a job's per-round metrics."""
        return f"{self.prefix}/metrics/{job_id}/"

    def round_metrics(self, job_id: str, round_index: int) -> str:
        """Key of one round's metrics."""
        return f"{self.metrics(job_id)}{round_index:08d}"

    def election(self, name: str) -> str:
        """Key whose holder leads the replicas called ``name``."""
        return f"{self.prefix}/election/{name}"

    def node_id_from_key(self, key: str) -> str:
        """Inverse of ``node``."""
        return key.removeprefix(self.nodes)
