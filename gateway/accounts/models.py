"""Users and their API tokens."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Enum, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from gateway.access_cache import watch_for_access
from gateway.db.base import Base, SoftDeleteMixin, TimestampMixin, utcnow


class UserType(enum.StrEnum):
    """Drives data routing: internal users read from on-site stores, external ones from public ones."""

    INTERNAL = "internal"
    EXTERNAL = "external"


class User(TimestampMixin, SoftDeleteMixin, Base):
    __tablename__ = "users"
    __table_args__ = (
        # Names of deleted users can be reused; live ones are unique.
        Index(
            "uq_users_name_live",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index(
            "uq_users_posix_name_live",
            "posix_name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(254), default=None)
    posix_name: Mapped[str] = mapped_column(String(32))
    user_type: Mapped[UserType] = mapped_column(
        Enum(
            UserType,
            name="user_type",
            values_callable=lambda e: [m.value for m in e],
            native_enum=False,
            length=16,
        ),
        default=UserType.INTERNAL,
    )
    region: Mapped[str | None] = mapped_column(String(64), default=None)
    is_admin: Mapped[bool] = mapped_column(default=False)
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    disabled: Mapped[bool] = mapped_column(default=False)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def active(self) -> bool:
        return not self.disabled and self.deleted_at is None


class ApiToken(TimestampMixin, Base):
    """A bearer token. Only its SHA-256 is stored; ``prefix`` is shown to people to tell tokens apart."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    user: Mapped[User] = relationship(lazy="raise")


watch_for_access(User, ApiToken)  # a disabled user or a revoked token must not outlive its commit


class SshKey(Base):
    """A public key of a user's: sshd in their environments accepts exactly these."""

    __tablename__ = "ssh_keys"
    __table_args__ = (UniqueConstraint("user_id", "fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    key_type: Mapped[str] = mapped_column(String(64))
    """OpenSSH's name: ``ssh-ed25519``, ``ssh-rsa``, ``ecdsa-sha2-nistp256``, ``sk-ssh-ed25519@openssh.com``..."""
    bits: Mapped[int] = mapped_column()
    public_key: Mapped[str] = mapped_column(Text)
    """``type base64`` as authorized_keys takes it (no options; the comment is kept in ``name``)."""
    fingerprint: Mapped[str] = mapped_column(String(64))
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
