"""Shared fixtures: a real etcd (session), per-test key prefixes, and a child-process reaper."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tessera.common.etcd import connect
from tessera.common.etcd.server import EtcdProcess


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdProcess]:
    """One etcd for the whole session on a free loopback port; its data dir is deleted after."""
    with EtcdProcess() as server:
        yield server


@pytest.fixture
def etcd_prefix() -> str:
    """A key prefix of the test's own, so tests sharing the etcd never see each other's keys."""
    return f"/test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def etcd_client(etcd_server: EtcdProcess) -> Iterator[Any]:
    """A client of the session etcd."""
    client = connect(etcd_server.endpoint)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def reap_children() -> Iterator[None]:
    """Kill any child process a test leaves behind (the session etcd is not a child of a test)."""
    before = set(_children())
    yield
    for pid in set(_children()) - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children() -> list[int]:
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    try:
        with open(path) as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []
