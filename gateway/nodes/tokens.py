"""One-time bootstrap tokens for a new node, and the Salt key fingerprints the bootstrap hands out.

A token is ``<node>.<nonce>.<expiry>.<HMAC-SHA256(node_bootstrap_secret, "node-bootstrap:v1:<node>:<nonce>:
<expiry>")>``: bound to the node's name, good until ``expiry`` (Unix seconds, 5 minutes after it was issued),
and spent once: the nonce is a row (gateway.nodes.models.BootstrapToken) whose ``used_at`` only one exchange
can set. The token itself is never stored or logged.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from datetime import datetime

import msgspec

TTL_SECONDS = 300
_PURPOSE = "node-bootstrap:v1"
_TOKEN = re.compile(r"([a-z0-9][a-z0-9-]{0,62})\.([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{64})")


class Refusal(enum.StrEnum):
    """Why a token was refused (the audit entry's reason; the caller only learns "401")."""

    MALFORMED = "malformed"
    TAMPERED = "tampered"
    EXPIRED = "expired"
    WRONG_NODE = "wrong-node"
    REPLAYED = "replayed"
    UNKNOWN = "unknown-nonce"


class Claims(msgspec.Struct, frozen=True):
    node: str
    nonce: str
    expires: int


class TokenRefused(Exception):
    def __init__(self, reason: Refusal, claims: Claims | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.claims = claims


def _mac(secret: str, node: str, nonce: str, expires: int) -> str:
    message = f"{_PURPOSE}:{node}:{nonce}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def issue(secret: str, node: str, now: datetime, *, ttl: int = TTL_SECONDS) -> tuple[str, Claims]:
    """A new token for ``node`` and what it claims (the nonce is to be recorded)."""
    claims = Claims(node=node, nonce=secrets.token_hex(16), expires=int(now.timestamp()) + ttl)
    return f"{node}.{claims.nonce}.{claims.expires}.{_mac(secret, node, claims.nonce, claims.expires)}", claims


def verify(secret: str, token: str, node: str, now: datetime) -> Claims:
    """The token's claims if it was made with ``secret``, for ``node``, and has not expired; else
    :class:`TokenRefused` with why. (Whether it was spent already is the database's to say.)"""
    found = _TOKEN.fullmatch(token)
    if found is None:
        raise TokenRefused(Refusal.MALFORMED)
    claims = Claims(node=found[1], nonce=found[2], expires=int(found[3]))
    if not hmac.compare_digest(found[4], _mac(secret, claims.node, claims.nonce, claims.expires)):
        raise TokenRefused(Refusal.TAMPERED)
    if claims.node != node:
        raise TokenRefused(Refusal.WRONG_NODE, claims)
    if now.timestamp() >= claims.expires:
        raise TokenRefused(Refusal.EXPIRED, claims)
    return claims


def _colons(digest: str) -> str:
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def minion_finger(pem: str) -> str:
    """A key's SHA-256 fingerprint as a Salt minion computes it (``master_finger``, ``key.finger``): the hash of
    the PEM's base64 lines only. ``salt-key -F`` hashes the whole PEM and so prints another value, which a
    minion given as ``master_finger`` refuses and exits (saltstack/salt#69970, unfixed in 3008.3 and 3008.5):
    the bootstrap hands out this one."""
    lines = [line for line in pem.splitlines(keepends=True) if line.strip()]
    if len(lines) < 3 or not lines[0].startswith("-----BEGIN") or not lines[-1].startswith("-----END"):
        raise ValueError("not a PEM key")
    return _colons(hashlib.sha256("".join(lines[1:-1]).encode()).hexdigest())
