from __future__ import annotations

from datetime import datetime

import msgspec
from msgspec import UNSET, UnsetType

from gateway.schemas import Email, Password, Region, UserName
from gateway.users.models import User, UserType


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
