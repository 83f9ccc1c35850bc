"""Leader election and fencing on a real etcd."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.scheduler.election import LeaderElection
from services.scheduler.store import EtcdJobStore
from tessera.common.errors import NotLeader
from tessera.common.etcd import KeySchema
from tessera.v1 import common_pb2


class Replica:
    def __init__(self, client: Any, keys: KeySchema, name: str) -> None:
        self.elected = threading.Event()
        self.lost = threading.Event()
        self.election = LeaderElection(
            client,
            keys.election("scheduler"),
            name,
            ttl=2,
            on_elected=lambda _term: self.elected.set(),
            on_lost=self.lost.set,
        )
        self.store = EtcdJobStore(client, keys, fence=self.election.fence)


def test_one_replica_leads_and_a_deposed_leader_cannot_write(
    etcd_client: Any, etcd_prefix: str
) -> None:
    # Prepare
    keys = KeySchema(etcd_prefix)
    first, second = Replica(etcd_client, keys, "a"), Replica(etcd_client, keys, "b")
    first.election.start()
    assert first.elected.wait(10)
    second.election.start()
    try:
        _fight(etcd_client, keys, first, second)
    finally:
        first.election.stop()
        second.election.stop()


def _fight(etcd_client: Any, keys: KeySchema, first: Replica, second: Replica) -> None:
    first.store.save_job(common_pb2.Job(job_id="j", message="by a"))
    with pytest.raises(NotLeader):
        second.store.save_job(common_pb2.Job(job_id="j", message="by b"))
    # Execute: a's lease disappears behind its back, as when it pauses past its TTL.
    term = first.election.term
    lease_id = etcd_client.get(keys.election("scheduler"))[1].lease_id
    etcd_client.revoke_lease(lease_id)
    assert second.elected.wait(10)
    # Assert: a's next write is refused (fenced by term, or a already stepped down); b's is not.
    with pytest.raises(NotLeader, match="(not|no longer) the leader"):
        first.store.save_job(common_pb2.Job(job_id="j", message="stale a"))
    second.store.save_job(common_pb2.Job(job_id="j", message="by b"))
    assert first.lost.wait(10)
    assert second.election.term > term
    assert EtcdJobStore(etcd_client, keys).get_job("j").message == "by b"
