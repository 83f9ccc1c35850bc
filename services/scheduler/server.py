"""Scheduler server assembly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health
from prometheus_client import REGISTRY

from services.scheduler.aggregator_client import AggregatorClient
from services.scheduler.config import SchedulerConfig
from services.scheduler.core import SchedulerCore
from services.scheduler.election import LeaderElection
from services.scheduler.metrics import SchedulerCollector
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.store import EtcdJobStore, NodeView
from tessera.common.auth import Role
from tessera.common.errors import NotLeader
from tessera.common.etcd import KeySchema, connect
from tessera.common.grpc_server import ServiceBinding, create_server, stop_server
from tessera.common.service import (
    auth_interceptor,
    run_until_signalled,
    setup_logging,
    start_metrics,
)
from tessera.v1 import scheduler_pb2, scheduler_pb2_grpc

__all__ = ["SERVICE_NAME", "RunningScheduler", "create_scheduler_server", "serve"]

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name

_USERS = frozenset({Role.SUBMITTER, Role.SERVICE})
# Who may call what (fail closed: an unlisted method is refused when authentication is on).
AUTH_RULES = {
    **{
        f"/{SERVICE_NAME}/{name}": _USERS
        for name in ("SubmitJob", "GetJob", "ListJobs", "WatchJob", "CancelJob", "GetMetrics")
    },
    f"/{SERVICE_NAME}/StreamTasks": frozenset({Role.NODE}),
    f"/{SERVICE_NAME}/ReportTask": frozenset({Role.NODE}),
}


@dataclass
class RunningScheduler:
    """A started scheduler replica and what it needs to stop cleanly."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    core: SchedulerCore
    aggregator: AggregatorClient
    election: LeaderElection

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving, resign leadership, stop the core."""
        stop_server(self.server, self.health, grace)
        self.election.stop()
        self.core.stop()
        self.aggregator.close()


def create_scheduler_server(
    config: SchedulerConfig, etcd_client: Any | None = None
) -> RunningScheduler:
    """Start a scheduler replica: serve at once, lead (resume jobs) once elected.

    Several replicas may run against one etcd; one leads and the others answer UNAVAILABLE
    until they take over. The leader's writes are fenced by its election term.
    """
    client = etcd_client or connect(config.etcd)
    keys = KeySchema(config.etcd_prefix)
    key = config.common.cluster_key
    service_token = key.mint(Role.SERVICE, "scheduler") if key is not None else None
    aggregator = AggregatorClient(
        config.aggregator,
        credentials=config.common.channel_credentials(),
        token=service_token,
    )
    election: LeaderElection | None = None

    def fence() -> list[Any]:
        if election is None:
            raise NotLeader("no election yet")
        return election.fence()

    core = SchedulerCore(
        EtcdJobStore(client, keys, fence=fence),
        NodeView(client, keys),
        aggregator,
        tickets=key.mint_ticket if key is not None else None,
    )
    binding = ServiceBinding(
        SERVICE_NAME, scheduler_pb2_grpc.add_SchedulerServicer_to_server, SchedulerServicer(core)
    )
    server, port, health_servicer = create_server(
        [binding],
        address=config.common.address,
        max_workers=config.max_workers,
        interceptors=[auth_interceptor(config.common, AUTH_RULES)],
        credentials=config.common.server_credentials(),
        max_concurrent_rpcs=config.common.max_concurrent_rpcs,
    )
    election = LeaderElection(
        client,
        keys.election("scheduler"),
        config.advertise or f"{config.common.host}:{port}",
        ttl=config.leader_ttl,
        on_elected=lambda _term: core.start(),
        on_lost=core.stop,
    )
    election.start()
    return RunningScheduler(server, port, health_servicer, core, aggregator, election)


def serve(config: SchedulerConfig) -> None:
    """Run until SIGTERM/SIGINT."""
    setup_logging(config.common.log_level)
    metrics_port = start_metrics(config.common.metrics_port)
    running = create_scheduler_server(config)
    REGISTRY.register(SchedulerCollector(running.core))
    run_until_signalled(
        running.stop,
        ready_file=config.common.ready_file,
        ready_info={"service": "scheduler", "port": running.port, "metrics_port": metrics_port},
    )
