"""API token format. Tokens are random; only their SHA-256 is stored (a slow hash adds nothing here)."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_SCHEME = "rgpu_"
PREFIX_LENGTH = 12


def new_token() -> str:
    return TOKEN_SCHEME + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_prefix(token: str) -> str:
    return token[:PREFIX_LENGTH]


def looks_like_token(value: str) -> bool:
    return value.startswith(TOKEN_SCHEME) and 20 <= len(value) <= 128
