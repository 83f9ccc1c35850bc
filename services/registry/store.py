"""Node records in etcd, bound to leases so that silent nodes vanish on their own."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from tessera.common.errors import NotFound
from tessera.common.etcd import KeySchema, translate_errors
from tessera.common.etcd.records import decode_node_record, encode_node_record
from tessera.v1 import common_pb2

__all__ = ["EtcdNodeStore", "NodeStore"]


class NodeStore(Protocol):
    """Live nodes.

    A record is lease-bound: it vanishes ``ttl`` seconds after the last ``refresh`` (or at once
    on ``remove``), and every reader of the store sees it disappear.
    """

    def add(self, node: common_pb2.Node, ttl: int) -> None:
        """Create a node record with a fresh lease of ``ttl`` seconds.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """

    def refresh(self, node_id: str, load: common_pb2.NodeLoad | None) -> int:
        """Keep the node alive, record its load if it changed; return the lease TTL.

        Raises:
            NotFound: the node is unknown or its lease already expired.
            StoreUnavailable: the store cannot be reached.
        """

    def remove(self, node_id: str) -> None:
        """Revoke the node's lease, deleting its record.

        Raises:
            NotFound: the node is unknown.
            StoreUnavailable: the store cannot be reached.
        """

    def list(self) -> list[common_pb2.Node]:
        """Return every live node.

        Raises:
            StoreUnavailable: the store cannot be reached.
            StoreCorrupt: a record cannot be decoded.
        """


class EtcdNodeStore:
    """``NodeStore`` on etcd leases; one lease per node."""

    def __init__(self, client: Any, keys: KeySchema) -> None:
        self._client = client
        self._keys = keys
        self._lock = threading.Lock()
        # node id -> (lease id, last load written); rebuilt from etcd after a restart.
        self._cache: dict[str, tuple[int, bytes]] = {}

    def add(self, node: common_pb2.Node, ttl: int) -> None:  # noqa: D102 - contract in NodeStore
        with translate_errors("node registration"):
            lease = self._client.lease(ttl)
            self._client.put(
                self._keys.node(node.node_id), encode_node_record(node, lease.id), lease
            )
        with self._lock:
            self._cache[node.node_id] = (lease.id, node.load.SerializeToString())

    def _lookup(self, node_id: str) -> tuple[common_pb2.Node | None, int, bytes]:
        with self._lock:
            cached = self._cache.get(node_id)
        if cached is not None:
            return None, cached[0], cached[1]
        with translate_errors("node lookup"):
            raw, _meta = self._client.get(self._keys.node(node_id))
        if raw is None:
            raise NotFound(f"node {node_id!r} is not registered (or its lease expired)")
        node, lease_id = decode_node_record(raw)
        return node, lease_id, node.load.SerializeToString()

    def refresh(  # noqa: D102 - contract in NodeStore
        self, node_id: str, load: common_pb2.NodeLoad | None
    ) -> int:
        node, lease_id, last_load = self._lookup(node_id)
        with translate_errors("heartbeat"):
            ttl = max((int(r.TTL) for r in self._client.refresh_lease(lease_id)), default=0)
        if ttl <= 0:
            self._forget(node_id)
            raise NotFound(f"node {node_id!r} lease expired; register again")
        new_load = load.SerializeToString() if load is not None else last_load
        if new_load != last_load:
            self._write_load(node, node_id, lease_id, load)
            last_load = new_load
        with self._lock:
            self._cache[node_id] = (lease_id, last_load)
        return ttl

    def _write_load(
        self,
        node: common_pb2.Node | None,
        node_id: str,
        lease_id: int,
        load: common_pb2.NodeLoad | None,
    ) -> None:
        if node is None:
            with translate_errors("node lookup"):
                raw, _meta = self._client.get(self._keys.node(node_id))
            if raw is None:
                self._forget(node_id)
                raise NotFound(f"node {node_id!r} lease expired; register again")
            node, _ = decode_node_record(raw)
        if load is not None:
            node.load.CopyFrom(load)
        with translate_errors("load update"):
            self._client.put(self._keys.node(node_id), encode_node_record(node, lease_id), lease_id)

    def _forget(self, node_id: str) -> None:
        with self._lock:
            self._cache.pop(node_id, None)

    def remove(self, node_id: str) -> None:  # noqa: D102 - contract in NodeStore
        _node, lease_id, _ = self._lookup(node_id)
        with translate_errors("deregistration"):
            self._client.revoke_lease(lease_id)
        self._forget(node_id)

    def list(self) -> list[common_pb2.Node]:  # noqa: D102 - contract in NodeStore
        with translate_errors("node listing"):
            rows = list(self._client.get_prefix(self._keys.nodes))
        return [decode_node_record(raw)[0] for raw, _meta in rows]
