"""Secrets at rest: AES-GCM sealing bound to its row and field, rotation by key order."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.crypto import KeyRing, SecretKeyError, key_id


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


OLD, NEW = _key(), _key()


@given(st.text(max_size=300))
def test_a_sealed_value_opens_for_its_context_only(plaintext: str) -> None:
    keys = KeyRing.parse(OLD)
    sealed = keys.seal(plaintext, "storage-source:1:secret_key")
    assert keys.unseal(sealed, "storage-source:1:secret_key") == plaintext
    with pytest.raises(SecretKeyError, match="another row or field"):
        keys.unseal(sealed, "storage-source:2:secret_key")


def test_two_seals_of_one_value_differ_and_an_altered_one_is_refused() -> None:
    keys = KeyRing.parse(OLD)
    a, b = keys.seal("s3cr3t", "c"), keys.seal("s3cr3t", "c")
    assert a != b and "s3cr3t" not in a  # a fresh nonce each time
    raw = bytearray(base64.b64decode(a.split(":", 2)[2]))
    raw[-1] ^= 1
    altered = ":".join([*a.split(":", 2)[:2], base64.b64encode(bytes(raw)).decode()])
    with pytest.raises(SecretKeyError):
        keys.unseal(altered, "c")


def test_rotation_the_first_key_seals_every_key_opens() -> None:
    sealed_old = KeyRing.parse(OLD).seal("k", "c")
    both = KeyRing.parse(f"{NEW}, {OLD}")
    assert both.unseal(sealed_old, "c") == "k" and not both.is_current(sealed_old)
    resealed = both.seal("k", "c")
    assert both.is_current(resealed) and resealed.split(":")[1] == key_id(base64.b64decode(NEW))
    with pytest.raises(SecretKeyError, match="does not hold"):
        KeyRing.parse(OLD).unseal(resealed, "c")  # the old key alone cannot read what the new one sealed


@pytest.mark.parametrize(
    ("setting", "message"),
    [(None, "empty"), ("", "empty"), ("not base64!", "not base64"), (base64.b64encode(b"short").decode(), "32 bytes")],
)
def test_a_bad_setting_says_what_is_wrong(setting: str | None, message: str) -> None:
    with pytest.raises(SecretKeyError, match=message):
        KeyRing.parse(setting)
