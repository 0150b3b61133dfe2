"""User accounts: creation, lookup, updates, soft deletion. Admin-only operations are guarded by callers."""

from __future__ import annotations

from msgspec import UNSET
from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.accounts.models import ApiToken, User, UserType
from gateway.accounts.passwords import hash_password
from gateway.accounts.schemas import UserCreate, UserUpdate
from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.db.base import utcnow
from gateway.db.paging import count_rows, page_of
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.schemas import Pagination
from gateway.workspaces.models import Member, Role, Workspace


def _live() -> Select[User]:
    return select(User).where(User.deleted_at.is_(None))


async def find_user(session: AsyncSession, name: str) -> User | None:
    return await session.scalar(_live().where(User.name == name))


async def get_user(session: AsyncSession, name: str) -> User:
    user = await find_user(session, name)
    if user is None:
        raise NotFound(f"user {name!r} not found")
    return user


async def _check_unique(
    session: AsyncSession, *, name: str | None, posix_name: str | None, exclude_id: int | None = None
) -> None:
    if name is not None:
        clash = await session.scalar(select(User.id).where(User.deleted_at.is_(None), User.name == name))
        if clash is not None and clash != exclude_id:
            raise Conflict(f"user {name!r} already exists", field="name")
    if posix_name is not None:
        clash = await session.scalar(select(User.id).where(User.deleted_at.is_(None), User.posix_name == posix_name))
        if clash is not None and clash != exclude_id:
            raise Conflict(f"POSIX account {posix_name!r} is already mapped to another user", field="posix_name")


async def create_user(session: AsyncSession, actor: Actor, data: UserCreate) -> User:
    posix_name = data.posix_name or data.name
    password_hash = await hash_password(data.password) if data.password else None  # before the transaction
    await _check_unique(session, name=data.name, posix_name=posix_name)
    user = User(
        name=data.name,
        email=data.email,
        posix_name=posix_name,
        user_type=data.user_type,
        region=data.region,
        is_admin=data.is_admin,
        password_hash=password_hash,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError as exc:  # lost a race with a concurrent creation
        await session.rollback()
        raise Conflict(f"user {data.name!r} or POSIX account {posix_name!r} already exists", field="name") from exc
    record(
        session,
        actor,
        "user.create",
        target_type="user",
        target=user.name,
        details={"is_admin": user.is_admin, "posix_name": posix_name, "user_type": user.user_type.value},
    )
    await session.commit()
    return user


async def list_users(
    session: AsyncSession,
    page: Pagination,
    *,
    q: str | None = None,
    is_admin: bool | None = None,
    disabled: bool | None = None,
    user_type: UserType | None = None,
) -> tuple[list[User], int | None]:
    query = _live()
    if q:
        pattern = f"%{q}%"
        query = query.where(or_(User.name.ilike(pattern, escape="\\"), User.email.ilike(pattern, escape="\\")))
    if is_admin is not None:
        query = query.where(User.is_admin.is_(is_admin))
    if disabled is not None:
        query = query.where(User.disabled.is_(disabled))
    if user_type is not None:
        query = query.where(User.user_type == user_type)
    total = await count_rows(session, query)
    rows = await session.scalars(page_of(query.order_by(User.name), page))
    return list(rows), total


async def update_user(session: AsyncSession, actor: Actor, name: str, data: UserUpdate) -> User:
    password_hash = await hash_password(data.password) if data.password is not UNSET else None
    user = await get_user(session, name)
    changes: dict[str, object] = {}
    for field in ("email", "posix_name", "user_type", "region", "is_admin", "disabled"):
        value = getattr(data, field)
        if value is not UNSET and value != getattr(user, field):
            changes[field] = value
    if "posix_name" in changes:
        await _check_unique(session, name=None, posix_name=str(changes["posix_name"]), exclude_id=user.id)
    if user.id == actor.user_id and (changes.get("is_admin") is False or changes.get("disabled") is True):
        raise InvalidInput(
            "you cannot remove your own admin rights or disable yourself",
            field="is_admin" if "is_admin" in changes else "disabled",
        )
    for field, value in changes.items():
        setattr(user, field, value)
    if password_hash is not None:
        user.password_hash = password_hash
        changes["password"] = "changed"
    if changes.get("disabled") is True:
        await _revoke_all_tokens(session, user.id)
    if changes:
        audit_details = {k: (v.value if hasattr(v, "value") else v) for k, v in changes.items()}
        record(session, actor, "user.update", target_type="user", target=user.name, details=audit_details)
    await session.commit()
    return user


async def _revoke_all_tokens(session: AsyncSession, user_id: int) -> None:
    await session.execute(
        update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )


async def delete_user(session: AsyncSession, actor: Actor, name: str) -> None:
    """Soft delete: the row stays for audit and billing history; tokens and memberships end now."""
    user = await get_user(session, name)
    if user.id == actor.user_id:
        raise InvalidInput("you cannot delete yourself", field="name")
    owned = await session.scalar(
        select(func.count())
        .select_from(Member)
        .where(Member.user_id == user.id, Member.deleted_at.is_(None), Member.role == "owner")
    )
    if owned:
        raise Conflict(f"user {name!r} owns {owned} workspace(s); transfer ownership first", field="name")
    now = utcnow()
    user.deleted_at = now
    user.disabled = True
    await _revoke_all_tokens(session, user.id)
    await session.execute(
        update(Member).where(Member.user_id == user.id, Member.deleted_at.is_(None)).values(deleted_at=now)
    )
    record(session, actor, "user.delete", target_type="user", target=user.name)
    await session.commit()


async def me(session: AsyncSession, actor: Actor) -> tuple[User, list[tuple[str, Role]]]:
    """The caller's account and their workspaces (slug, role), by slug."""
    user = await session.get(User, actor.user_id)
    if user is None:
        raise NotFound("user not found")
    rows = await session.execute(
        select(Workspace.slug, Member.role)
        .join(Member, Member.workspace_id == Workspace.id)
        .where(Member.user_id == user.id, Member.deleted_at.is_(None), Workspace.deleted_at.is_(None))
        .order_by(Workspace.slug)
    )
    return user, [(slug, role) for slug, role in rows]
