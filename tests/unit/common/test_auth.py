import time

import jwt
import pytest

from tessera.common.auth import ClusterKey, NodeSigner, RateLimiter, Role
from tessera.common.errors import InvalidSpec, QuotaExceeded, Unauthenticated

METHOD = "/tessera.v1.Registry/Heartbeat"


def test_bearer_tokens_carry_their_role_and_subject() -> None:
    key = ClusterKey.generate()
    identity = key.verify(key.mint(Role.SUBMITTER, "alice"), "/any")
    assert (identity.role, identity.subject) == (Role.SUBMITTER, "alice")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda k: ClusterKey.generate().mint(Role.JOIN, "x"), "forged credentials"),
        (lambda k: k.mint(Role.JOIN, "x", ttl=-10), "credentials expired"),
        (lambda k: "not-a-token", "malformed credentials"),
        (lambda k: jwt.encode({"sub": "x"}, b"k" * 32, algorithm="HS256"), "no role or subject"),
    ],
)
def test_bad_bearer_tokens_are_refused_with_the_reason(make: object, message: str) -> None:
    key = ClusterKey.generate()
    with pytest.raises(Unauthenticated, match=message):
        key.verify(make(key), METHOD)  # type: ignore[operator]


def test_node_proofs_are_single_use_and_bound_to_their_method() -> None:
    key = ClusterKey.generate()
    signer = NodeSigner("n1", key.node_secret("n1"))
    proof = signer.proof(METHOD)
    assert key.verify(proof, METHOD).subject == "n1"
    with pytest.raises(Unauthenticated, match="replayed request"):
        key.verify(proof, METHOD)
    with pytest.raises(Unauthenticated, match="was made for /tessera.v1.Registry/Heartbeat"):
        key.verify(signer.proof(METHOD), "/tessera.v1.Registry/Deregister")


def test_a_node_cannot_sign_as_another_and_old_proofs_expire() -> None:
    key = ClusterKey(b"s" * 32, window=30.0)
    impostor = NodeSigner("victim", key.node_secret("attacker"))
    with pytest.raises(Unauthenticated, match="forged"):
        key.verify(impostor.proof(METHOD), METHOD)
    claims = {"typ": "node", "sub": "n", "iat": time.time() - 120, "jti": "j", "mth": METHOD}
    stale = jwt.encode(claims, key.node_secret("n"), algorithm="HS256")
    with pytest.raises(Unauthenticated, match="the window is 30 s"):
        key.verify(stale, METHOD)


def test_tickets_grant_one_task_to_one_node() -> None:
    key = ClusterKey.generate()
    ticket = key.mint_ticket("job", 3, 1, "n1")
    key.check_ticket(ticket, "job", 3, 1, "n1")
    with pytest.raises(Unauthenticated, match="task job/3/2 is not assigned to node 'n1'"):
        key.check_ticket(ticket, "job", 3, 2, "n1")
    with pytest.raises(Unauthenticated, match="not assigned to node 'n2'"):
        key.check_ticket(ticket, "job", 3, 1, "n2")
    with pytest.raises(Unauthenticated, match="no task ticket"):
        key.check_ticket("", "job", 3, 1, "n1")
    with pytest.raises(Unauthenticated, match="not a task ticket"):
        key.check_ticket(key.mint(Role.SERVICE, "s"), "job", 3, 1, "n1")


def test_rate_limiter_refills_over_time() -> None:
    limiter = RateLimiter(rate=2.0, burst=2.0)
    limiter.take("a", now=0.0)
    limiter.take("a", now=0.0)
    with pytest.raises(QuotaExceeded, match="2 requests per second"):
        limiter.take("a", now=0.1)
    limiter.take("b", now=0.1)
    limiter.take("a", now=0.6)


def test_keys_are_validated() -> None:
    with pytest.raises(InvalidSpec, match="at least 16 bytes"):
        ClusterKey(b"short")
    with pytest.raises(InvalidSpec, match="must be hex"):
        ClusterKey.from_hex("zz")
    assert ClusterKey.from_hex(ClusterKey(b"k" * 16).to_hex()).to_hex() == (b"k" * 16).hex()
    with pytest.raises(InvalidSpec, match="per-request proofs"):
        ClusterKey.generate().mint(Role.NODE, "n")
