"""Password login, token issue/verify/revoke."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.access_cache import ACCESS_CACHE, ACCESS_NEUTRAL
from gateway.accounts.models import ApiToken, User
from gateway.accounts.passwords import verify_password
from gateway.accounts.schemas import TokenCreated
from gateway.accounts.tokens import looks_like_token, new_token, token_hash, token_prefix
from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.db.base import utcnow
from gateway.errors import NotFound, Unauthorized

# Writing last_used_at on every request would turn each read into a write; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


async def issue_token(
    session: AsyncSession, actor: Actor, user: User, *, name: str, ttl_days: int | None
) -> TokenCreated:
    secret = new_token()
    expires_at = utcnow() + timedelta(days=ttl_days) if ttl_days else None
    token = ApiToken(
        user_id=user.id,
        name=name,
        prefix=token_prefix(secret),
        token_hash=token_hash(secret),
        expires_at=expires_at,
    )
    session.add(token)
    await session.flush()
    record(
        session,
        actor,
        "token.create",
        target_type="token",
        target=f"{user.name}/{token.prefix}",
        details={"name": name, "expires_at": expires_at.isoformat() if expires_at else None},
    )
    await session.commit()
    return TokenCreated(token=secret, id=token.id, name=name, prefix=token.prefix, expires_at=expires_at)


async def login(session: AsyncSession, username: str, password: str, *, name: str, ttl_days: int) -> TokenCreated:
    """Exchange a password for a token. Every failure looks the same to the caller."""
    user = await session.scalar(select(User).where(User.name == username, User.deleted_at.is_(None)))
    await session.commit()  # do not hold a transaction (SQLite: the write lock) through the slow hash
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok or user.disabled:
        raise Unauthorized("invalid username or password")
    user.last_login_at = utcnow()
    actor = Actor(name=user.name, user_id=user.id, is_admin=user.is_admin, posix_name=user.posix_name)
    return await issue_token(session, actor, user, name=name, ttl_days=ttl_days)


async def authenticate(session: Callable[[], AsyncSession], secret: str) -> Actor:
    """Resolve a bearer token to its actor: from the access cache, else in one query.

    Last use is refreshed at most once a minute (and only on cache misses).
    """
    if not looks_like_token(secret):
        raise Unauthorized("invalid or expired token")
    digest = token_hash(secret)
    return await ACCESS_CACHE.actor(digest, lambda: _load_actor(session(), digest))


async def _load_actor(session: AsyncSession, digest: str) -> tuple[Actor, datetime | None]:
    row = (
        await session.execute(
            select(
                ApiToken.id,
                ApiToken.expires_at,
                ApiToken.last_used_at,
                User.id,
                User.name,
                User.is_admin,
                User.posix_name,
            )
            .join(User, User.id == ApiToken.user_id)
            .where(
                ApiToken.token_hash == digest,
                ApiToken.revoked_at.is_(None),
                User.deleted_at.is_(None),
                User.disabled.is_(False),
            )
        )
    ).first()
    now = utcnow()
    if row is None or (row[1] is not None and row[1] <= now):
        raise Unauthorized("invalid or expired token")
    token_id, expires_at, last_used, user_id, user_name, is_admin, posix_name = row
    if last_used is None or now - last_used >= LAST_USED_RESOLUTION:
        # End the read first: on SQLite an UPDATE inside a read transaction that another connection has
        # overtaken fails at once (SQLITE_BUSY_SNAPSHOT) instead of waiting. Last use is bookkeeping, so a
        # failure to record it never fails the request.
        await session.commit()
        try:
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now),
                execution_options={ACCESS_NEUTRAL: True},  # does not change who may do what
            )
            await session.commit()
        except OperationalError:
            await session.rollback()
    actor = Actor(name=user_name, user_id=user_id, is_admin=is_admin, token_id=token_id, posix_name=posix_name)
    return actor, expires_at


async def list_tokens(session: AsyncSession, actor: Actor) -> list[ApiToken]:
    rows = await session.scalars(
        select(ApiToken).where(ApiToken.user_id == actor.user_id, ApiToken.revoked_at.is_(None)).order_by(ApiToken.id)
    )
    now = utcnow()
    return [t for t in rows if t.expires_at is None or t.expires_at > now]


async def revoke_token(session: AsyncSession, actor: Actor, token_id: int) -> None:
    token = await session.scalar(
        select(ApiToken).where(
            ApiToken.id == token_id, ApiToken.user_id == actor.user_id, ApiToken.revoked_at.is_(None)
        )
    )
    if token is None:
        raise NotFound(f"token {token_id} not found")
    token.revoked_at = utcnow()
    record(session, actor, "token.revoke", target_type="token", target=f"{actor.name}/{token.prefix}")
    await session.commit()
