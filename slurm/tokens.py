"""JWTs for slurmrestd: one per user, because slurmrestd runs each request as the user its token names.

A :class:`TokenSource` mints a token for a user and lifespan: :class:`ScontrolTokens` asks the controller
(``scontrol token``, which only root or the SlurmUser may do for another user), :class:`SignedTokens` signs
HS256 tokens with the cluster's ``jwt_hs256.key`` itself (for a gateway host without Slurm's commands).
:class:`TokenCache` keeps one token per user until shortly before it expires, and asks the source once per
user however many requests wait for it (single flight).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import jwt

from slurm.cli import CliSlurmClient
from slurm.errors import SlurmError


class TokenSource(Protocol):
    async def __call__(self, user: str, lifespan: int) -> str:
        """A token for ``user`` valid for ``lifespan`` seconds from now."""
        ...


class ScontrolTokens:
    """``scontrol token username=USER lifespan=SECONDS``, run as the CLI backend runs Slurm's commands. The
    controller signs the token, so it needs no key on this host, only Slurm's commands, munge and the right
    to mint tokens for others (root or the SlurmUser)."""

    def __init__(self, *, slurm_conf: str | None = None, timeout: float = 30.0, scontrol: str = "scontrol") -> None:
        self.commands = CliSlurmClient(slurm_conf=slurm_conf, timeout=timeout, max_commands=4)
        self.scontrol = scontrol

    async def __call__(self, user: str, lifespan: int) -> str:
        out = await self.commands.command([self.scontrol, "token", f"username={user}", f"lifespan={lifespan}"])
        return parse_scontrol_token(out)


def parse_scontrol_token(output: str) -> str:
    """``SLURM_JWT=eyJ...`` -> the token."""
    for line in output.splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name == "SLURM_JWT" and value:
            return value
    raise SlurmError(f"no SLURM_JWT in scontrol's output: {output.strip()[:200]!r}", command="scontrol")


class SignedTokens:
    """HS256 tokens signed here with the key of ``AuthAltParameters=jwt_key=...``, as ``scontrol token``
    makes them (claims ``iat``, ``exp`` and ``sun``, the user name). Whoever holds the key can act as any
    user, root included: keep it as private as slurmctld does."""

    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if not key:
            raise ValueError("an empty JWT key")
        self._key = key
        self._clock = clock

    @classmethod
    def from_file(cls, path: str) -> SignedTokens:
        return cls(Path(path).read_bytes())

    def sign(self, user: str, lifespan: int) -> str:
        now = int(self._clock())
        return jwt.encode({"exp": now + lifespan, "iat": now, "sun": user}, self._key, algorithm="HS256")

    async def __call__(self, user: str, lifespan: int) -> str:
        return self.sign(user, lifespan)


class TokenCache:
    """One token per user, reused until ``margin`` seconds before it expires.

    Expiry is counted on ``clock`` from the moment the token was asked for (never later than the issuer's
    own ``iat``), so a slow source only makes the token look older than it is. Concurrent callers for the
    same user share one request to the source; a failure reaches all of them and is not cached.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        lifespan: int = 3600,
        margin: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = 10_000,
    ) -> None:
        if margin >= lifespan:
            raise ValueError(f"margin ({margin}) must be shorter than the lifespan ({lifespan})")
        self.source = source
        self.lifespan = lifespan
        self.margin = margin
        self.max_users = max_users
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self._pending: dict[str, asyncio.Future[str]] = {}

    async def get(self, user: str) -> str:
        cached = self._tokens.get(user)
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        pending = self._pending.get(user)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(user, asked=self._clock()))
            self._pending[user] = pending
            pending.add_done_callback(lambda done: self._settled(user, done))
        # shield: one caller giving up (cancelled) must not cancel the request the others wait for
        return await asyncio.shield(pending)

    def invalidate(self, user: str) -> None:
        """Forget the user's token (slurmrestd refused it): the next request gets a new one."""
        self._tokens.pop(user, None)

    async def _fetch(self, user: str, *, asked: float) -> str:
        token = await self.source(user, self.lifespan)
        self._remember(user, token, asked + self.lifespan - self.margin)
        return token

    def _remember(self, user: str, token: str, refresh_at: float) -> None:
        self._tokens.pop(user, None)
        self._tokens[user] = (token, refresh_at)
        if len(self._tokens) > self.max_users:
            now = self._clock()
            for name in [name for name, (_, until) in self._tokens.items() if until <= now]:
                del self._tokens[name]
            while len(self._tokens) > self.max_users:  # still full: the oldest go first
                del self._tokens[next(iter(self._tokens))]

    def _settled(self, user: str, done: asyncio.Future[str]) -> None:
        if self._pending.get(user) is done:
            del self._pending[user]
        if not done.cancelled():
            done.exception()  # retrieved: no "exception was never retrieved" when every waiter gave up
