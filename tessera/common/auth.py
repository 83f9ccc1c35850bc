"""Credentials: join, submitter and service tokens, per-node request proofs, task tickets.

Everything is an HS256 JSON Web Token (RFC 7519, via PyJWT) keyed by the cluster key, a
secret the operator gives the registry, scheduler and aggregator:

- **bearer tokens** (``join`` for volunteers joining, ``submitter`` for users, ``service``
  between services) are minted by operators (``tessera token``) and checked for signature and
  expiry;
- a **node** never sends a reusable credential. The registry gives each node a secret derived
  from the cluster key and its id (HMAC-SHA256); for every request the node signs a fresh
  *proof* naming the RPC, the time and a random nonce. A proof is accepted once, only for that
  RPC, and only within ``window`` seconds of its time, so a captured proof cannot be replayed;
- a **task ticket** is minted by the scheduler for one (job, round, task, node) and checked by
  the aggregator: a node can push only for tasks assigned to it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt

from tessera.common.errors import InvalidSpec, QuotaExceeded, Unauthenticated

__all__ = [
    "ClusterKey",
    "Identity",
    "NodeSigner",
    "RateLimiter",
    "ReplayGuard",
    "Role",
]

_ALGORITHM = "HS256"


class Role(enum.Enum):
    """Who a credential speaks for."""

    JOIN = "join"
    NODE = "node"
    SUBMITTER = "submitter"
    SERVICE = "service"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    role: Role
    subject: str


class ReplayGuard:
    """Remembers proof nonces for ``window`` seconds; a repeat within it is a replay."""

    def __init__(self, window: float, capacity: int = 1_000_000) -> None:
        self._window = window
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, nonce: str, now: float) -> None:
        """Record ``nonce``.

        Raises:
            Unauthenticated: it was seen within the window.
            QuotaExceeded: more nonces than ``capacity`` are live (a flood).
        """
        with self._lock:
            while self._seen:
                oldest, seen_at = next(iter(self._seen.items()))
                if now - seen_at <= 2 * self._window:
                    break
                del self._seen[oldest]
            if nonce in self._seen:
                raise Unauthenticated("replayed request: this proof was already used")
            if len(self._seen) >= self._capacity:
                raise QuotaExceeded("too many requests in the replay window")
            self._seen[nonce] = now


class RateLimiter:
    """A token bucket per caller: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str, now: float | None = None) -> None:
        """Spend one token of ``caller``'s bucket.

        Raises:
            QuotaExceeded: the bucket is empty.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(caller, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                raise QuotaExceeded(
                    f"rate limit: {caller} may make {self._rate:g} requests per second"
                )
            self._buckets[caller] = (tokens - 1.0, now)


class ClusterKey:
    """The cluster's signing secret, and everything minted or checked with it."""

    def __init__(self, secret: bytes, *, window: float = 60.0) -> None:
        if len(secret) < 16:
            raise InvalidSpec("the cluster key must be at least 16 bytes")
        self._secret = secret
        self.window = window
        self._replays = ReplayGuard(window)

    @classmethod
    def generate(cls) -> ClusterKey:
        """A fresh random key (for local clusters)."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_hex(cls, text: str) -> ClusterKey:
        """Parse the hex form (``TESSERA_CLUSTER_KEY``).

        Raises:
            InvalidSpec: not hex, or too short.
        """
        try:
            return cls(bytes.fromhex(text.strip()))
        except ValueError as exc:
            raise InvalidSpec(f"the cluster key must be hex: {exc}") from exc

    @classmethod
    def from_env(cls) -> ClusterKey | None:
        """The key in ``TESSERA_CLUSTER_KEY``, or None (authentication off)."""
        text = os.environ.get("TESSERA_CLUSTER_KEY", "")
        return cls.from_hex(text) if text else None

    def to_hex(self) -> str:
        """The hex form."""
        return self._secret.hex()

    def mint(self, role: Role, subject: str, *, ttl: float = 30 * 86400) -> str:
        """A bearer token for ``role`` (join, submitter or service)."""
        if role is Role.NODE:
            raise InvalidSpec("nodes sign per-request proofs; they get no bearer token")
        now = int(time.time())
        claims = {"typ": role.value, "sub": subject, "iat": now, "exp": now + int(ttl)}
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def node_secret(self, node_id: str) -> bytes:
        """The secret of node ``node_id``: only holders of the cluster key can derive it."""
        return hmac.new(self._secret, b"node:" + node_id.encode(), hashlib.sha256).digest()

    def verify(self, token: str, method: str) -> Identity:
        """Check a bearer token or a node proof made for ``method``.

        Raises:
            Unauthenticated: forged, corrupt, expired, replayed, or made for another method.
        """
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"malformed credentials: {exc}") from None
        role_name = unverified.get("typ")
        subject = unverified.get("sub")
        if not isinstance(subject, str) or role_name not in {r.value for r in Role}:
            raise Unauthenticated("malformed credentials: no role or subject")
        role = Role(role_name)
        if role is Role.NODE:
            return self._verify_proof(token, subject, method)
        claims = self._decode(token, self._secret, ["exp", "iat"])
        return Identity(role, str(claims["sub"]))

    def _decode(self, token: str, key: bytes, required: list[str]) -> dict[str, Any]:
        try:
            # Proof times are checked against the window (both directions) by the caller.
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                options={"require": required, "verify_iat": False},
            )
            return claims
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("credentials expired") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("forged credentials: bad signature") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid credentials: {exc}") from None

    def _verify_proof(self, token: str, node_id: str, method: str) -> Identity:
        claims = self._decode(token, self.node_secret(node_id), ["iat", "jti", "mth"])
        now = time.time()
        if abs(now - float(claims["iat"])) > self.window:
            raise Unauthenticated(
                f"request proof is {now - float(claims['iat']):.0f} s old; the window is "
                f"{self.window:g} s (is the node's clock right?)"
            )
        if claims["mth"] != method:
            raise Unauthenticated(f"request proof was made for {claims['mth']}, not {method}")
        self._replays.check(str(claims["jti"]), now)
        return Identity(Role.NODE, node_id)

    def mint_ticket(self, job_id: str, round_index: int, task: int, node_id: str) -> str:
        """A ticket that lets ``node_id`` push the contribution of one task."""
        now = int(time.time())
        claims = {
            "typ": "ticket",
            "sub": node_id,
            "job": job_id,
            "rnd": round_index,
            "tsk": task,
            "iat": now,
            "exp": now + 86400,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def check_ticket(
        self, ticket: str, job_id: str, round_index: int, task: int, node_id: str
    ) -> None:
        """Check that ``ticket`` assigns this task to this node.

        Raises:
            Unauthenticated: no ticket, a forged one, or one for another task or node.
        """
        if not ticket:
            raise Unauthenticated("the contribution carries no task ticket")
        claims = self._decode(ticket, self._secret, ["exp"])
        if claims.get("typ") != "ticket":
            raise Unauthenticated("not a task ticket")
        granted = (claims.get("job"), claims.get("rnd"), claims.get("tsk"), claims.get("sub"))
        if granted != (job_id, round_index, task, node_id):
            raise Unauthenticated(
                f"task {job_id}/{round_index}/{task} is not assigned to node {node_id!r}"
            )


class NodeSigner:
    """What a node holds after registering: it signs a fresh proof for every request."""

    def __init__(self, node_id: str, secret: bytes) -> None:
        self.node_id = node_id
        self._secret = secret

    def proof(self, method: str) -> str:
        """A single-use proof for one call of ``method`` (``/tessera.v1.Registry/Heartbeat``)."""
        claims = {
            "typ": Role.NODE.value,
            "sub": self.node_id,
            "iat": time.time(),
            "jti": uuid.uuid4().hex,
            "mth": method,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)
