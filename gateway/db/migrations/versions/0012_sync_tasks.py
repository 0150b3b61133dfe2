"""sync tasks: copies of a version from one store to another (lease, attempts, progress), and what the gateway
knows of each file in each store (verified with its listing's ETag, or a multipart copy with its finished parts)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 02:56:03.942077
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.base import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("pair_id", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("not_before", UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", UTCDateTime(timezone=True), nullable=True),
        sa.Column("objects_total", sa.Integer(), nullable=False),
        sa.Column("objects_done", sa.Integer(), nullable=False),
        sa.Column("objects_copied", sa.Integer(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_copied", sa.BigInteger(), nullable=False),
        sa.Column("bytes_per_second", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("started_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_sync_tasks_created_by_users")),
        sa.ForeignKeyConstraint(
            ["source_id"], ["storage_sources.id"], name=op.f("fk_sync_tasks_source_id_storage_sources")
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["storage_sources.id"], name=op.f("fk_sync_tasks_target_id_storage_sources")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name=op.f("fk_sync_tasks_version_id_dataset_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_tasks")),
    )
    with op.batch_alter_table("sync_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_sync_tasks_due", ["status", "next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_sync_tasks_target_id"), ["target_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sync_tasks_version_id"), ["version_id"], unique=False)
        batch_op.create_index(
            "uq_sync_tasks_open",
            ["version_id", "target_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('queued', 'running')"),
            postgresql_where=sa.text("status IN ('queued', 'running')"),
        )

    op.create_table(
        "sync_objects",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.String(length=200), nullable=True),
        sa.Column("upload_id", sa.String(length=1024), nullable=True),
        sa.Column("part_size", sa.BigInteger(), nullable=True),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("parts_copied", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"], ["storage_sources.id"], name=op.f("fk_sync_objects_target_id_storage_sources")
        ),
        sa.ForeignKeyConstraint(["task_id"], ["sync_tasks.id"], name=op.f("fk_sync_objects_task_id_sync_tasks")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name=op.f("fk_sync_objects_version_id_dataset_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_objects")),
    )
    with op.batch_alter_table("sync_objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sync_objects_target_id"), ["target_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sync_objects_task_id"), ["task_id"], unique=False)
        batch_op.create_index("uq_sync_objects_path", ["version_id", "target_id", "path"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("sync_objects", schema=None) as batch_op:
        batch_op.drop_index("uq_sync_objects_path")
        batch_op.drop_index(batch_op.f("ix_sync_objects_task_id"))
        batch_op.drop_index(batch_op.f("ix_sync_objects_target_id"))

    op.drop_table("sync_objects")
    with op.batch_alter_table("sync_tasks", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_sync_tasks_open",
            sqlite_where=sa.text("status IN ('queued', 'running')"),
            postgresql_where=sa.text("status IN ('queued', 'running')"),
        )
        batch_op.drop_index(batch_op.f("ix_sync_tasks_version_id"))
        batch_op.drop_index(batch_op.f("ix_sync_tasks_target_id"))
        batch_op.drop_index("ix_sync_tasks_due")

    op.drop_table("sync_tasks")
