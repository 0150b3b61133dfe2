"""Tokens for slurmrestd: the per-user cache (fake clock and source), HS256 signing, ``scontrol token``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from pathlib import Path

import jwt
import pytest

from slurm.errors import AccessDenied, SlurmError
from slurm.tokens import ScontrolTokens, SignedTokens, TokenCache, parse_scontrol_token


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeSource:
    """Counts requests; ``gate`` holds them until set, ``fail`` makes them raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, user: str, lifespan: int) -> str:
        self.calls.append((user, lifespan))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return f"{user}-{len(self.calls)}"


async def test_a_token_is_reused_until_shortly_before_it_expires() -> None:
    clock, source = FakeClock(), FakeSource()
    cache = TokenCache(source, lifespan=600, margin=60, clock=clock)
    assert await cache.get("alice") == "alice-1"
    clock.now += 539
    assert await cache.get("alice") == "alice-1"
    assert await cache.get("bob") == "bob-2"
    clock.now += 1  # 540 s after alice's was asked for: within the margin of its expiry
    assert await cache.get("alice") == "alice-3"
    assert source.calls == [("alice", 600), ("bob", 600), ("alice", 600)]


async def test_expiry_counts_from_when_the_token_was_asked_for() -> None:
    clock, source = FakeClock(), FakeSource()
    source.gate.clear()
    cache = TokenCache(source, lifespan=600, margin=60, clock=clock)
    waiting = asyncio.ensure_future(cache.get("alice"))
    await asyncio.sleep(0)
    clock.now += 100  # a slow source: the token is that much older when it arrives
    source.gate.set()
    assert await waiting == "alice-1"
    clock.now += 440
    assert await cache.get("alice") == "alice-2"


async def test_concurrent_callers_share_one_request() -> None:
    source = FakeSource()
    source.gate.clear()
    cache = TokenCache(source, clock=FakeClock())
    waiters = [asyncio.ensure_future(cache.get("alice")) for _ in range(5)]
    other = asyncio.ensure_future(cache.get("bob"))
    await asyncio.sleep(0)
    source.gate.set()
    assert await asyncio.gather(*waiters) == ["alice-1"] * 5
    assert await other == "bob-2"
    assert len(source.calls) == 2


async def test_a_failure_reaches_every_waiter_and_is_not_cached() -> None:
    source = FakeSource()
    source.gate.clear()
    source.fail = AccessDenied("Access/permission denied", command="scontrol")
    cache = TokenCache(source, clock=FakeClock())
    waiters = [asyncio.ensure_future(cache.get("alice")) for _ in range(3)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, AccessDenied) for r in results)
    source.fail = None
    assert await cache.get("alice") == "alice-2"


async def test_one_waiter_giving_up_does_not_cancel_the_others() -> None:
    source = FakeSource()
    source.gate.clear()
    cache = TokenCache(source, clock=FakeClock())
    impatient = asyncio.ensure_future(cache.get("alice"))
    patient = asyncio.ensure_future(cache.get("alice"))
    await asyncio.sleep(0)
    impatient.cancel()
    source.gate.set()
    assert await patient == "alice-1"
    assert impatient.cancelled()


async def test_invalidate_forgets_a_token() -> None:
    source = FakeSource()
    cache = TokenCache(source, clock=FakeClock())
    assert await cache.get("alice") == "alice-1"
    cache.invalidate("alice")
    cache.invalidate("nobody")
    assert await cache.get("alice") == "alice-2"


async def test_the_cache_is_bounded_expired_tokens_first() -> None:
    clock, source = FakeClock(), FakeSource()
    cache = TokenCache(source, lifespan=600, margin=60, clock=clock, max_users=2)
    await cache.get("old")
    clock.now += 1000  # old's has expired
    await cache.get("a")
    await cache.get("b")  # over the bound: the expired one goes
    assert await cache.get("a") == "a-2" and await cache.get("b") == "b-3"
    await cache.get("c")  # over again, nothing expired: the oldest (a) goes
    assert await cache.get("b") == "b-3"
    assert await cache.get("a") == "a-5"


def test_margin_must_be_shorter_than_the_lifespan() -> None:
    with pytest.raises(ValueError, match="margin"):
        TokenCache(FakeSource(), lifespan=60, margin=60)


def _decode(part: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


async def test_signed_tokens_are_hs256_jwts_for_the_user() -> None:
    key = b"k" * 32
    token = await SignedTokens(key, clock=lambda: 1_700_000_000.7)("alice", 3600)
    header, claims, signature = token.split(".")
    assert _decode(header) == {"alg": "HS256", "typ": "JWT"}
    assert _decode(claims) == {"exp": 1_700_003_600, "iat": 1_700_000_000, "sun": "alice"}
    # checked as slurmctld checks it: HMAC-SHA256 over header.claims with the cluster's key
    expected = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == expected
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, b"x" * 32, algorithms=["HS256"], options={"verify_exp": False})
    assert "=" not in token


def test_signed_tokens_need_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        SignedTokens(b"")
    path = tmp_path / "jwt.key"
    path.write_bytes(b"s" * 32)
    assert SignedTokens.from_file(str(path)).sign("bob", 10).count(".") == 2


def test_scontrol_token_output() -> None:
    assert parse_scontrol_token("SLURM_JWT=eyJ.abc.def\n") == "eyJ.abc.def"
    with pytest.raises(SlurmError, match="no SLURM_JWT"):
        parse_scontrol_token("scontrol: error: something\n")


async def test_scontrol_tokens_run_scontrol(tmp_path: Path) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\necho "SLURM_JWT=t.$2.$3.${SLURM_CONF:-none}"\n')
    fake.chmod(0o755)
    source = ScontrolTokens(slurm_conf="/etc/x.conf", scontrol=str(fake))
    assert await source("alice", 60) == "t.username=alice.lifespan=60./etc/x.conf"


async def test_scontrol_refusals_are_typed(tmp_path: Path) -> None:
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'scontrol: error: Access/permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(AccessDenied, match="Access/permission denied"):
        await ScontrolTokens(scontrol=str(fake))("alice", 60)
