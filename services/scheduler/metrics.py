"""Prometheus metrics of the scheduler, read from live state at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tessera.v1 import common_pb2

if TYPE_CHECKING:
    from services.scheduler.core import SchedulerCore

__all__ = ["SchedulerCollector"]


class SchedulerCollector(Collector):
    """Live nodes, jobs by state and the current rounds' tasks by state.

    A collector rather than gauges updated in place: the numbers are derived from the state the
    scheduler already keeps, so they can never drift from it.
    """

    def __init__(self, core: SchedulerCore) -> None:
        self._core = core

    def describe(self) -> Iterator[GaugeMetricFamily]:  # noqa: D102 - Collector API
        yield GaugeMetricFamily("tessera_live_nodes", "Nodes with a live lease")
        yield GaugeMetricFamily("tessera_jobs", "Jobs by state", labels=["state"])
        yield GaugeMetricFamily("tessera_tasks", "Tasks by state", labels=["state"])
        yield GaugeMetricFamily("tessera_leader", "1 while this scheduler leads")

    def collect(self) -> Iterator[GaugeMetricFamily]:  # noqa: D102 - Collector API
        leading = self._core.leading
        yield GaugeMetricFamily(
            "tessera_leader", "1 while this scheduler leads", value=1.0 if leading else 0.0
        )
        yield GaugeMetricFamily(
            "tessera_live_nodes", "Nodes with a live lease", value=self._core.live_node_count()
        )
        jobs = GaugeMetricFamily("tessera_jobs", "Jobs by state", labels=["state"])
        by_state = Counter(
            common_pb2.JobState.Name(j.state).removeprefix("JOB_STATE_").lower()
            for j in (self._core.list_jobs() if leading else [])
        )
        for state, count in sorted(by_state.items()):
            jobs.add_metric([state], count)
        yield jobs
        tasks = GaugeMetricFamily(
            "tessera_tasks", "Tasks of the rounds in progress, by state", labels=["state"]
        )
        for state, count in sorted(self._core.task_counts().items()):
            tasks.add_metric([state], count)
        yield tasks
