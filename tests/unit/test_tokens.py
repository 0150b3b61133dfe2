from __future__ import annotations

from gateway.accounts.passwords import hash_password, verify_password
from gateway.accounts.tokens import looks_like_token, new_token, token_hash, token_prefix


def test_tokens_are_random_prefixed_and_hash_deterministically() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith("rgpu_") and looks_like_token(a)
    assert token_hash(a) == token_hash(a) != token_hash(b)
    assert len(token_hash(a)) == 64 and a not in token_hash(a)
    assert token_prefix(a) == a[:12]


def test_things_that_are_not_tokens() -> None:
    for value in ("", "rgpu_", "rgpu_short", "Bearer x", "x" * 40, "rgpu_" + "a" * 200):
        assert not looks_like_token(value)


async def test_password_hashing() -> None:
    stored = await hash_password("correct horse")
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert await verify_password(stored, "correct horse")
    assert not await verify_password(stored, "wrong horse")
    assert not await verify_password(None, "correct horse")
    assert not await verify_password("not-a-hash", "correct horse")
