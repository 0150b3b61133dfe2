"""Who is acting: the authenticated caller of a request, or the operator running the CLI."""

from __future__ import annotations

import msgspec


class Actor(msgspec.Struct, frozen=True):
    name: str
    user_id: int | None = None
    is_admin: bool = False
    token_id: int | None = None
    posix_name: str | None = None
    """The user's POSIX account on the cluster (None for the operator)."""

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        """The local operator (CLI, bootstrap): a platform admin with no user row."""
        return cls(name=name, is_admin=True)
