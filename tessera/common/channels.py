"""Client channels, including to several replicas of one service."""

from __future__ import annotations

import grpc

__all__ = ["open_channel"]


def open_channel(addresses: str) -> grpc.Channel:
    """A channel to ``host:port``, or to several comma-separated replicas.

    Several replicas (IP literals, e.g. ``127.0.0.1:50052,127.0.0.1:50062``) share one channel
    with round-robin balancing: a replica that answers UNAVAILABLE (a standby, or a dead one)
    is skipped by the caller's retry, which lands on the next replica.
    """
    replicas = [a.strip() for a in addresses.split(",") if a.strip()]
    if len(replicas) <= 1:
        return grpc.insecure_channel(replicas[0] if replicas else addresses)
    return grpc.insecure_channel(
        "ipv4:" + ",".join(replicas), options=[("grpc.lb_policy_name", "round_robin")]
    )
