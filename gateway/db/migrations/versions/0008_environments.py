"""environments, sessions, port mappings, ssh keys, job kinds

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 15:30:09.859580
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.base import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "ssh_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_type", sa.String(length=64), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_ssh_keys_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ssh_keys")),
        sa.UniqueConstraint("user_id", "fingerprint", name=op.f("uq_ssh_keys_user_id")),
    )
    with op.batch_alter_table("ssh_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ssh_keys_user_id"), ["user_id"], unique=False)

    op.create_table(
        "environments",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("current_job_id", sa.String(length=32), nullable=True),
        sa.Column("starts", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column("deleted_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_environments_user_id_users")),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_environments_workspace_id_workspaces")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_environments")),
    )
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_environments_user_id"), ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_environments_workspace_id"), ["workspace_id"], unique=False)
        batch_op.create_index(
            "uq_environments_name_live",
            ["workspace_id", "user_id", "name"],
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )

    op.create_table(
        "environment_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.id"], name=op.f("fk_environment_events_environment_id_environments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_environment_events")),
    )
    with op.batch_alter_table("environment_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_environment_events_environment_id"), ["environment_id"], unique=False)

    op.create_table(
        "environment_sessions",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("reported_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("node", sa.String(length=64), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("services", sa.JSON(), nullable=False),
        sa.Column("stop_requested_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("stop_actor", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.id"], name=op.f("fk_environment_sessions_environment_id_environments")
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_environment_sessions")),
    )
    with op.batch_alter_table("environment_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_environment_sessions_environment_id"), ["environment_id"], unique=False)

    op.create_table(
        "port_mappings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("environment_id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("service", sa.String(length=16), nullable=False),
        sa.Column("node", sa.String(length=64), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("node_port", sa.Integer(), nullable=False),
        sa.Column("public_port", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_accessed_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("auto_release_hours", sa.Integer(), nullable=False),
        sa.Column("released_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["environment_id"], ["environments.id"], name=op.f("fk_port_mappings_environment_id_environments")
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_port_mappings_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_port_mappings")),
    )
    with op.batch_alter_table("port_mappings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_port_mappings_environment_id"), ["environment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_port_mappings_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            "uq_port_mappings_public_port_live",
            ["public_port"],
            unique=True,
            sqlite_where=sa.text("released_at IS NULL"),
            postgresql_where=sa.text("released_at IS NULL"),
        )

    with op.batch_alter_table("gateway_instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret", sa.String(length=64), nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="training", nullable=False))


def downgrade() -> None:

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("kind")

    with op.batch_alter_table("gateway_instance", schema=None) as batch_op:
        batch_op.drop_column("secret")

    with op.batch_alter_table("port_mappings", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_port_mappings_public_port_live",
            sqlite_where=sa.text("released_at IS NULL"),
            postgresql_where=sa.text("released_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_port_mappings_job_id"))
        batch_op.drop_index(batch_op.f("ix_port_mappings_environment_id"))

    op.drop_table("port_mappings")
    with op.batch_alter_table("environment_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_environment_sessions_environment_id"))

    op.drop_table("environment_sessions")
    with op.batch_alter_table("environment_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_environment_events_environment_id"))

    op.drop_table("environment_events")
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_environments_name_live",
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_environments_workspace_id"))
        batch_op.drop_index(batch_op.f("ix_environments_user_id"))

    op.drop_table("environments")
    with op.batch_alter_table("ssh_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ssh_keys_user_id"))

    op.drop_table("ssh_keys")
