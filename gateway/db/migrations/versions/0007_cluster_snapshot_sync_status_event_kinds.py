"""cluster snapshot, workspaces' Slurm sync status, job event kinds and actors

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 12:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.base import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_snapshot",
        sa.Column("singleton", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("cluster", sa.String(length=64), nullable=True),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("checked_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("nodes", sa.JSON(), nullable=False),
        sa.Column("partitions", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_cluster_snapshot")),
    )
    op.create_table(
        "workspace_slurm_sync",
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            sa.Enum("pending", "ok", "error", name="slurm_sync_state", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_workspace_slurm_sync_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workspace_id", name=op.f("pk_workspace_slurm_sync")),
    )
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), server_default="state", nullable=False))
        batch_op.add_column(sa.Column("actor", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.drop_column("actor")
        batch_op.drop_column("kind")
    op.drop_table("workspace_slurm_sync")
    op.drop_table("cluster_snapshot")
