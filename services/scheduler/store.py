"""The scheduler's durable state in etcd: job records, task records, and the live-node view."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import etcd3.events
from google.protobuf import json_format

from tessera.common.errors import NotFound, NotLeader, StoreCorrupt, StoreUnavailable
from tessera.common.etcd import KeySchema, translate_errors
from tessera.common.etcd.records import decode_node_record
from tessera.common.retry import Backoff
from tessera.v1 import common_pb2

__all__ = ["EtcdJobStore", "JobStore", "NodeView", "PatientJobStore"]

T = TypeVar("T")

log = logging.getLogger(__name__)


class JobStore(Protocol):
    """Durable job and task records.

    Writes are last-writer-wins (one scheduler owns a job at a time); a record read back is the
    last one written.
    """

    def save_job(self, job: common_pb2.Job) -> None:
        """Create or overwrite a job record.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """

    def get_job(self, job_id: str) -> common_pb2.Job:
        """Read one job record.

        Raises:
            NotFound: no such job.
            StoreUnavailable: the store cannot be reached.
            StoreCorrupt: the record cannot be decoded.
        """

    def list_jobs(self) -> list[common_pb2.Job]:
        """Every job record, oldest first.

        Raises:
            StoreUnavailable: the store cannot be reached.
            StoreCorrupt: a record cannot be decoded.
        """

    def save_round(
        self,
        job: common_pb2.Job,
        metrics: common_pb2.RoundMetrics,
        tasks: Sequence[tuple[int, dict[str, Any]]] = (),
    ) -> None:
        """Write a closed round: its metrics, task records and the updated job record.

        One transaction; ``tasks`` are (index, JSON-able state) pairs.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """

    def round_metrics(self, job_id: str) -> list[common_pb2.RoundMetrics]:
        """Every stored round's metrics of a job, oldest first.

        Raises:
            StoreUnavailable: the store cannot be reached.
            StoreCorrupt: a record cannot be decoded.
        """


def _decode_job(raw: bytes) -> common_pb2.Job:
    try:
        return json_format.Parse(raw, common_pb2.Job())
    except json_format.ParseError as exc:
        raise StoreCorrupt(f"undecodable job record: {exc}") from exc


class EtcdJobStore:
    """``JobStore`` on etcd; records are protobuf JSON, readable with etcdctl.

    With a ``fence`` (the leader election's compares), every write is a transaction that
    succeeds only while this replica leads; otherwise it raises ``NotLeader`` and writes nothing.
    """

    def __init__(
        self, client: Any, keys: KeySchema, fence: Callable[[], list[Any]] | None = None
    ) -> None:
        self._client = client
        self._keys = keys
        self._fence = fence or list

    def _write(self, what: str, puts: list[Any]) -> None:
        compare = self._fence()
        with translate_errors(what):
            ok, _ = self._client.transaction(compare=compare, success=puts, failure=[])
        if not ok:
            raise NotLeader(f"{what} refused: this scheduler is no longer the leader")

    def save_job(self, job: common_pb2.Job) -> None:  # noqa: D102 - contract in JobStore
        txn = self._client.transactions
        payload = json_format.MessageToJson(job, indent=0)
        self._write("job write", [txn.put(self._keys.job(job.job_id), payload)])

    def get_job(self, job_id: str) -> common_pb2.Job:  # noqa: D102
        with translate_errors("job read"):
            raw, _meta = self._client.get(self._keys.job(job_id))
        if raw is None:
            raise NotFound(f"job {job_id!r} not found")
        return _decode_job(raw)

    def list_jobs(self) -> list[common_pb2.Job]:  # noqa: D102
        with translate_errors("job listing"):
            rows = list(self._client.get_prefix(self._keys.jobs))
        jobs = [_decode_job(raw) for raw, _meta in rows]
        return sorted(jobs, key=lambda j: j.created_at)

    def save_round(  # noqa: D102 - contract in JobStore
        self,
        job: common_pb2.Job,
        metrics: common_pb2.RoundMetrics,
        tasks: Sequence[tuple[int, dict[str, Any]]] = (),
    ) -> None:
        txn = self._client.transactions
        puts = [
            txn.put(self._keys.job(job.job_id), json_format.MessageToJson(job, indent=0)),
            txn.put(
                self._keys.round_metrics(job.job_id, metrics.round),
                json_format.MessageToJson(metrics, indent=0),
            ),
        ]
        puts += [
            txn.put(self._keys.task(job.job_id, metrics.round, index), json.dumps(state))
            for index, state in tasks
        ]
        self._write("round write", puts)

    def round_metrics(self, job_id: str) -> list[common_pb2.RoundMetrics]:  # noqa: D102
        with translate_errors("metrics read"):
            rows = list(self._client.get_prefix(self._keys.metrics(job_id)))
        try:
            return [json_format.Parse(raw, common_pb2.RoundMetrics()) for raw, _meta in rows]
        except json_format.ParseError as exc:
            raise StoreCorrupt(f"undecodable round metrics of job {job_id!r}: {exc}") from exc


class NodeView:
    """The live nodes, kept current by an etcd watch (no polling).

    ``on_change(lost_ids)`` is called from the watch thread after every change, with the ids of
    nodes whose records vanished (lease expired or revoked).
    """

    def __init__(self, client: Any, keys: KeySchema) -> None:
        self._client = client
        self._keys = keys
        self._lock = threading.Lock()
        self._nodes: dict[str, common_pb2.Node] = {}
        self._listeners: list[Callable[[set[str]], None]] = []
        self._watch_id: int | None = None
        self._closed = False
        self._closed_event = threading.Event()

    def subscribe(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(lost_node_ids)`` after every change."""
        with self._lock:
            self._listeners.append(listener)

    def start(self) -> None:
        """Load the current nodes, then watch for changes from the next revision on.

        Raises:
            StoreUnavailable: etcd cannot be reached.
        """
        self._closed = False
        self._closed_event.clear()
        with translate_errors("node listing"):
            response = self._client.get_prefix_response(self._keys.nodes)
        nodes = {}
        for kv in response.kvs:
            node, _lease = decode_node_record(kv.value)
            nodes[node.node_id] = node
        with self._lock:
            self._nodes = nodes
        with translate_errors("node watch"):
            self._watch_id = self._client.add_watch_prefix_callback(
                self._keys.nodes, self._on_watch, start_revision=response.header.revision + 1
            )
        self._notify(set())

    def stop(self) -> None:
        """Cancel the watch."""
        self._closed = True
        self._closed_event.set()
        watch_id, self._watch_id = self._watch_id, None
        if watch_id is not None:
            try:
                self._client.cancel_watch(watch_id)
            except Exception as exc:  # noqa: BLE001 - the watch dies with its stream anyway
                log.info("node watch cancel failed: %s", exc)

    def _on_watch(self, response: Any) -> None:
        if isinstance(response, Exception):
            if not self._closed:
                log.warning("node watch broke (%s); re-listing and watching again", response)
                threading.Thread(
                    target=self._restart, name="node-watch-restart", daemon=True
                ).start()
            return
        lost: set[str] = set()
        with self._lock:
            for event in response.events:
                node_id = self._keys.node_id_from_key(event.key.decode())
                if isinstance(event, etcd3.events.DeleteEvent):
                    if self._nodes.pop(node_id, None) is not None:
                        lost.add(node_id)
                else:
                    try:
                        self._nodes[node_id] = decode_node_record(event.value)[0]
                    except StoreCorrupt:
                        log.error("ignoring undecodable node record %s", node_id)
        self._notify(lost)

    def _restart(self) -> None:
        backoff = Backoff(initial=0.2, maximum=5.0)
        while not self._closed:
            before = set(self.nodes())
            try:
                self.start()
            except Exception as exc:  # noqa: BLE001 - keep trying until etcd is back
                log.warning("node watch restart failed: %s", exc)
                if backoff.wait(self._closed_event):
                    return
                continue
            self._notify(before - set(self.nodes()))
            return

    def _notify(self, lost: set[str]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(lost)

    def contains(self, node_id: str) -> bool:
        """Whether the node is live; asks etcd when the watch has not delivered it yet."""
        with self._lock:
            if node_id in self._nodes:
                return True
        with translate_errors("node lookup"):
            raw, _meta = self._client.get(self._keys.node(node_id))
        return raw is not None

    def nodes(self) -> dict[str, common_pb2.Node]:
        """A snapshot of the live nodes by id."""
        with self._lock:
            return dict(self._nodes)


class PatientJobStore:
    """A ``JobStore`` that rides out etcd outages: calls retry ``StoreUnavailable`` with backoff.

    Job runners write through this, so an etcd restart stalls a job instead of failing it.
    After ``patience`` seconds of failures (or once ``stop`` is set) the error is raised.
    """

    def __init__(
        self, inner: JobStore, *, patience: float = 300.0, stop: threading.Event | None = None
    ) -> None:
        self._inner = inner
        self._patience = patience
        self._stop = stop or threading.Event()

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self._patience
        backoff = Backoff(initial=0.1, maximum=5.0)
        while True:
            try:
                return fn()
            except StoreUnavailable as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("%s failed (%s); retrying", what, exc)
                if backoff.wait(self._stop):
                    raise

    def save_job(self, job: common_pb2.Job) -> None:  # noqa: D102 - contract in JobStore
        self._retry("job write", lambda: self._inner.save_job(job))

    def get_job(self, job_id: str) -> common_pb2.Job:  # noqa: D102
        return self._retry("job read", lambda: self._inner.get_job(job_id))

    def list_jobs(self) -> list[common_pb2.Job]:  # noqa: D102
        return self._retry("job listing", self._inner.list_jobs)

    def save_round(  # noqa: D102
        self,
        job: common_pb2.Job,
        metrics: common_pb2.RoundMetrics,
        tasks: Sequence[tuple[int, dict[str, Any]]] = (),
    ) -> None:
        self._retry("round write", lambda: self._inner.save_round(job, metrics, tasks))

    def round_metrics(self, job_id: str) -> list[common_pb2.RoundMetrics]:  # noqa: D102
        return self._retry("metrics read", lambda: self._inner.round_metrics(job_id))
