from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from gateway.auth.models import ApiToken
from gateway.schemas import TokenName

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
