"""Secrets at rest (storage sources' access and secret keys): AES-256-GCM with keys from the settings.

``secret_keys`` holds one or more base64 32-byte keys, newest first. The first encrypts; every key decrypts,
so a rotation is: put a new key first, run ``remotegpu admin rotate-secrets`` (everything sealed again with the
new key, in one transaction), then drop the old key from the setting. A sealed value is
``v1:<key id>:<base64 nonce + ciphertext>``; the key id is the first 8 hex digits of the key's SHA-256 (it names
the key without revealing it). The associated data binds a value to its row and field (``storage-source:7:
secret_key``), so a ciphertext copied into another row or column does not decrypt.

Make a key with ``python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "v1"
_NONCE = 12


class SecretKeyError(ValueError):
    """The ``secret_keys`` setting is missing or malformed, or a value was sealed with a key it lacks."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class KeyRing:
    """The setting's keys; ``seal`` with the first, ``unseal`` with whichever sealed the value."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise SecretKeyError("secret_keys is empty: set REMOTEGPU_SECRET_KEYS to a base64 32-byte key")
        if any(len(k) != 32 for k in keys):
            raise SecretKeyError("secret_keys: every key must be 32 bytes (AES-256), base64-encoded")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self.current = key_id(keys[0])

    @classmethod
    def parse(cls, setting: str | None) -> KeyRing:
        """From the setting's text: base64 keys separated by commas or whitespace, newest first."""
        parts = (setting or "").replace(",", " ").split()
        try:
            return cls([base64.b64decode(p, validate=True) for p in parts])
        except binascii.Error:
            raise SecretKeyError("secret_keys: not base64") from None

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._keys[self.current].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{VERSION}:{self.current}:{base64.b64encode(nonce + sealed).decode()}"

    def unseal(self, value: str, context: str) -> str:
        version, kid, body = _split(value)
        aead = self._keys.get(kid)
        if version != VERSION or aead is None:
            raise SecretKeyError(f"sealed with key {kid}, which secret_keys does not hold")
        raw = base64.b64decode(body)
        try:
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], context.encode()).decode()
        except InvalidTag:
            raise SecretKeyError(f"a value sealed for another row or field than {context}, or altered") from None

    def is_current(self, value: str) -> bool:
        return _split(value)[1] == self.current


def _split(value: str) -> tuple[str, str, str]:
    parts = value.split(":", 2)
    if len(parts) != 3:
        raise SecretKeyError("not a sealed value")
    return parts[0], parts[1], parts[2]
