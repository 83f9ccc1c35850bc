"""Record formats shared by the service that writes a key and the services that read it."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format

from tessera.common.errors import StoreCorrupt
from tessera.v1 import common_pb2

__all__ = ["decode_node_record", "encode_node_record"]


def encode_node_record(node: common_pb2.Node, lease_id: int) -> str:
    """JSON stored at ``nodes/<id>`` by the registry; readable with etcdctl."""
    return json.dumps({"lease": lease_id, "node": json_format.MessageToDict(node)})


def decode_node_record(raw: bytes) -> tuple[common_pb2.Node, int]:
    """Inverse of ``encode_node_record``: (node, lease id).

    Raises:
        StoreCorrupt: the value is not a node record.
    """
    try:
        data: dict[str, Any] = json.loads(raw)
        node = json_format.ParseDict(data["node"], common_pb2.Node())
        return node, int(data["lease"])
    except (ValueError, KeyError, TypeError, json_format.ParseError) as exc:
        raise StoreCorrupt(f"undecodable node record: {exc}") from exc
