"""Bootstrap tokens: signed, bound to a node, expiring; and Salt's minion-style key fingerprint."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.nodes import tokens
from gateway.nodes.tokens import Refusal, TokenRefused

SECRET = "bootstrap-secret-for-tests"
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_a_token_verifies_for_its_node_until_it_expires() -> None:
    token, claims = tokens.issue(SECRET, "gpu-node-01", NOW)
    assert claims.expires == int(NOW.timestamp()) + 300 and len(claims.nonce) == 32
    assert tokens.verify(SECRET, token, "gpu-node-01", NOW + timedelta(seconds=299)) == claims
    with pytest.raises(TokenRefused) as refused:
        tokens.verify(SECRET, token, "gpu-node-01", NOW + timedelta(seconds=300))
    assert refused.value.reason is Refusal.EXPIRED


def test_every_token_has_its_own_nonce() -> None:
    first, _ = tokens.issue(SECRET, "n1", NOW)
    second, _ = tokens.issue(SECRET, "n1", NOW)
    assert first != second


def test_another_nodes_token_is_refused_as_wrong_node() -> None:
    token, _ = tokens.issue(SECRET, "n1", NOW)
    with pytest.raises(TokenRefused) as refused:
        tokens.verify(SECRET, token, "n2", NOW)
    assert refused.value.reason is Refusal.WRONG_NODE and refused.value.claims is not None


@pytest.mark.parametrize("part", [0, 1, 2, 3])
def test_changing_any_part_is_tampering(part: int) -> None:
    token, _ = tokens.issue(SECRET, "n1", NOW)
    pieces = token.split(".")
    replacement = {0: "n2", 1: "0" * 32, 2: str(int(pieces[2]) + 3600), 3: "f" * 64}[part]
    pieces[part] = replacement
    with pytest.raises(TokenRefused) as refused:
        tokens.verify(SECRET, ".".join(pieces), "n1" if part else "n2", NOW)
    assert refused.value.reason is Refusal.TAMPERED


def test_a_token_of_another_secret_is_tampered() -> None:
    token, _ = tokens.issue("another-secret", "n1", NOW)
    with pytest.raises(TokenRefused) as refused:
        tokens.verify(SECRET, token, "n1", NOW)
    assert refused.value.reason is Refusal.TAMPERED


@pytest.mark.parametrize("text", ["", "n1", "N1.00.1.00", "n1." + "a" * 32 + ".1." + "b" * 63, "x" * 300])
def test_malformed_tokens(text: str) -> None:
    with pytest.raises(TokenRefused) as refused:
        tokens.verify(SECRET, text, "n1", NOW)
    assert refused.value.reason is Refusal.MALFORMED


def test_minion_finger_hashes_the_base64_lines_only() -> None:
    """The value a minion compares master_finger with; salt-key -F's (the whole PEM) differs (salt#69970)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pub = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    body = "".join(line + "\n" for line in pub.strip().splitlines()[1:-1])
    expected = hashlib.sha256(body.encode()).hexdigest()
    finger = tokens.minion_finger(pub)
    assert finger.replace(":", "") == expected and len(finger) == 95
    whole = hashlib.sha256(pub.encode()).hexdigest()
    assert finger.replace(":", "") != whole


def test_minion_finger_refuses_what_is_not_pem() -> None:
    with pytest.raises(ValueError, match="PEM"):
        tokens.minion_finger("not a key")
