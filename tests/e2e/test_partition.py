"""A worker cut off by a network partition: its lease lapses, its tasks move, it rejoins.

The test builds its own test host: a network namespace joined to the root namespace by a veth
pair with addresses of its own; the services bind the host end, so only this test's processes
are ever addressed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera.cli.cluster import LocalCluster
from tessera.client import Client, EventKind, JobConfig, JobState

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

HEARTBEAT_INTERVAL = 0.5
PATIENCE = 4
LEASE_TTL = HEARTBEAT_INTERVAL * PATIENCE


@dataclass
class GuestHost:
    namespace: str
    host_link: str
    host_ip: str
    guest_ip: str

    def cut(self) -> None:
        _ip("link", "set", self.host_link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_link, "up")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def test_host() -> Iterator[GuestHost]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 ('ip')")
    tag = uuid.uuid4().hex[:6]
    octet = int(tag[:2], 16)
    host = GuestHost(f"tsr-{tag}", f"tsr-h-{tag}", f"10.213.{octet}.1", f"10.213.{octet}.2")
    guest_link = f"tsr-g-{tag}"
    try:
        _ip("netns", "add", host.namespace)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        _ip("link", "add", host.host_link, "type", "veth", "peer", "name", guest_link)
        _ip("link", "set", guest_link, "netns", host.namespace)
        _ip("addr", "add", f"{host.host_ip}/30", "dev", host.host_link)
        _ip("link", "set", host.host_link, "up")
        for command in (
            ("addr", "add", f"{host.guest_ip}/30", "dev", guest_link),
            ("link", "set", guest_link, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("-n", host.namespace, *command)
        yield host
    finally:
        subprocess.run(["ip", "link", "del", host.host_link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, check=False)


def _wait_until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_partitioned_worker_loses_its_tasks_within_the_lease_and_rejoins(
    test_host: GuestHost, tmp_path: Path
) -> None:
    # Prepare: two workers beside the services, a third behind the link the test controls.
    with LocalCluster(
        workers=2,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        patience=PATIENCE,
        log_dir=tmp_path,
        host=test_host.host_ip,
    ) as cluster:
        cluster.add_worker(netns=test_host.namespace)
        spec = JobConfig(
            rounds=40, min_nodes=3, tasks_per_round=3, batch_size=64, learning_rate=0.02,
            policy="round_robin",
        )  # fmt: skip
        with Client(
            cluster.scheduler_address, registry=cluster.registry_address, token=cluster.token
        ) as client:
            job = client.submit(spec)
            events = job.watch()
            for event in events:
                if event.kind is EventKind.ROUND_COMPLETED and event.metrics is not None:
                    if event.metrics.round >= 2:
                        break
            # Execute: cut the link; nothing tells the services.
            test_host.cut()
            cut_at = time.monotonic()
            moved_at = None
            for event in events:
                if event.kind is EventKind.TASK_REASSIGNED and "lost nodes: ['" in event.message:
                    moved_at = time.monotonic()
                    break
            assert moved_at is not None
            # Heal; the worker finds its lease gone and registers again.
            test_host.heal()
            _wait_until(lambda: len(client.list_nodes()) == 3, 60, "the worker to rejoin")
            final = job.wait()
    # Assert
    print(f"tasks moved {moved_at - cut_at:.2f} s after the cut (lease TTL {LEASE_TTL} s)")
    assert moved_at - cut_at <= LEASE_TTL + 2.0, moved_at - cut_at
    assert final.state is JobState.SUCCEEDED, final.message
    assert final.rounds_completed == 40
