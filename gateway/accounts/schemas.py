"""Request and response bodies of users, tokens and logins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

from gateway.accounts.models import ApiToken, User, UserType
from gateway.schemas import Email, Password, Region, TokenName, UserName


class UserCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: UserName
    password: Password | None = None
    email: Email | None = None
    posix_name: UserName | None = None
    """POSIX account the user's jobs run as; defaults to ``name``."""
    user_type: UserType = UserType.INTERNAL
    region: Region | None = None
    is_admin: bool = False


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Only the fields present are changed; ``null`` clears an optional field."""

    password: Password | UnsetType = UNSET
    email: Email | UnsetType | None = UNSET
    posix_name: UserName | UnsetType = UNSET
    user_type: UserType | UnsetType = UNSET
    region: Region | UnsetType | None = UNSET
    is_admin: bool | UnsetType = UNSET
    disabled: bool | UnsetType = UNSET


class UserOut(msgspec.Struct, kw_only=True):
    name: str
    email: str | None
    posix_name: str
    user_type: UserType
    region: str | None
    is_admin: bool
    disabled: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            name=user.name,
            email=user.email,
            posix_name=user.posix_name,
            user_type=user.user_type,
            region=user.region,
            is_admin=user.is_admin,
            disabled=user.disabled,
            created_at=user.created_at,
            updated_at=user.updated_at,
            last_login_at=user.last_login_at,
        )


ExpiresInDays = Annotated[int, msgspec.Meta(ge=1, le=3650)]


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    name: TokenName = "api"
    expires_in_days: ExpiresInDays | None = None


class TokenCreated(msgspec.Struct, kw_only=True):
    """The only time the secret is shown."""

    token: str
    id: int
    name: str
    prefix: str
    expires_at: datetime | None


class TokenOut(msgspec.Struct, kw_only=True):
    id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    current: bool

    @classmethod
    def of(cls, token: ApiToken, current_id: int | None) -> TokenOut:
        return cls(
            id=token.id,
            name=token.name,
            prefix=token.prefix,
            created_at=token.created_at,
            expires_at=token.expires_at,
            last_used_at=token.last_used_at,
            current=token.id == current_id,
        )
