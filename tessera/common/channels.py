"""Client channels, including to several replicas of one service."""

from __future__ import annotations

from typing import Any

import grpc

__all__ = ["open_channel"]


def open_channel(
    addresses: str, credentials: grpc.ChannelCredentials | None = None
) -> grpc.Channel:
    """A channel to ``host:port``, or to several comma-separated replicas.

    Several replicas (IP literals, e.g. ``127.0.0.1:50052,127.0.0.1:50062``) share one channel
    with round-robin balancing: a replica that answers UNAVAILABLE (a standby, or a dead one)
    is skipped by the caller's retry, which lands on the next replica. With ``credentials``
    the channel uses TLS.
    """
    replicas = [a.strip() for a in addresses.split(",") if a.strip()]
    options: list[tuple[str, Any]] = []
    target = replicas[0] if len(replicas) == 1 else addresses
    if len(replicas) > 1:
        target = "ipv4:" + ",".join(replicas)
        options.append(("grpc.lb_policy_name", "round_robin"))
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)
