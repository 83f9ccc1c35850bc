"""Domain errors shared by every service and the SDK.

Core logic raises these; one server interceptor maps them to gRPC status codes
(``tessera.common.grpc_server``) and the SDK maps status codes back to them
(``tessera.client.errors``), so a message written once reaches the user unchanged.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "InvalidSpec",
    "NotFound",
    "NotLeader",
    "QuotaExceeded",
    "StoreCorrupt",
    "StoreUnavailable",
    "TesseraError",
    "Unauthenticated",
    "Unavailable",
    "Unschedulable",
]


class TesseraError(Exception):
    """Base of every error Tessera raises on purpose; the message is user-facing."""


class InvalidSpec(TesseraError):
    """Input breaks a rule; the message quotes the bad value and the rule."""


class NotFound(TesseraError):
    """A named job, node, round or model version does not exist."""


class Unauthenticated(TesseraError):
    """Missing, forged, expired or replayed credentials."""


class QuotaExceeded(TesseraError):
    """A size, rate or concurrency limit was hit."""


class Conflict(TesseraError):
    """The request contradicts current state (stale version, finished job, ...)."""


class Unschedulable(TesseraError):
    """No feasible placement exists for a job's tasks; the message says why."""


class Unavailable(TesseraError):
    """A dependency (etcd, another service) cannot be reached right now; retry later."""


class NotLeader(Unavailable):
    """This replica is not (or no longer) the leader; another one serves the request."""


class StoreUnavailable(Unavailable):
    """The backing store cannot be reached."""


class StoreCorrupt(TesseraError):
    """The backing store holds a value that cannot be decoded."""
