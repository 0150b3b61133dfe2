"""datasets and models: storage sources (sealed keys, last health check), datasets, versions, their manifests
(path, size, our SHA-256), open multipart uploads, replicas per store

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 02:42:20.315524
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.base import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "storage_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=500), nullable=False),
        sa.Column("bucket", sa.String(length=63), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=True),
        sa.Column("prefix", sa.String(length=200), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("access_key_sealed", sa.Text(), nullable=False),
        sa.Column("secret_key_sealed", sa.Text(), nullable=False),
        sa.Column("health", sa.String(length=16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("checked_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_sources")),
        sa.UniqueConstraint("name", name=op.f("uq_storage_sources_name")),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("shared_with", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column("deleted_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_datasets_created_by_users")),
        sa.ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], name=op.f("fk_datasets_workspace_id_workspaces")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_datasets_workspace_id"), ["workspace_id"], unique=False)
        batch_op.create_index(
            "uq_datasets_name_live",
            ["workspace_id", "kind", "name"],
            unique=True,
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )

    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("primary_source_id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=300), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("ready_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], name=op.f("fk_dataset_versions_dataset_id_datasets")),
        sa.ForeignKeyConstraint(
            ["primary_source_id"],
            ["storage_sources.id"],
            name=op.f("fk_dataset_versions_primary_source_id_storage_sources"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_versions")),
    )
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_versions_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index("uq_dataset_versions_number", ["dataset_id", "version"], unique=True)

    op.create_table(
        "dataset_files",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name=op.f("fk_dataset_files_version_id_dataset_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_files")),
    )
    with op.batch_alter_table("dataset_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_files_version_id"), ["version_id"], unique=False)
        batch_op.create_index("uq_dataset_files_path", ["version_id", "path"], unique=True)

    op.create_table(
        "dataset_replicas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("synced_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["source_id"], ["storage_sources.id"], name=op.f("fk_dataset_replicas_source_id_storage_sources")
        ),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name=op.f("fk_dataset_replicas_version_id_dataset_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_replicas")),
    )
    with op.batch_alter_table("dataset_replicas", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_replicas_source_id"), ["source_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_dataset_replicas_version_id"), ["version_id"], unique=False)
        batch_op.create_index("uq_dataset_replicas", ["version_id", "source_id"], unique=True)

    op.create_table(
        "dataset_uploads",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("part_size", sa.BigInteger(), nullable=False),
        sa.Column("s3_upload_id", sa.String(length=1024), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name=op.f("fk_dataset_uploads_created_by_users")),
        sa.ForeignKeyConstraint(
            ["version_id"], ["dataset_versions.id"], name=op.f("fk_dataset_uploads_version_id_dataset_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_uploads")),
    )
    with op.batch_alter_table("dataset_uploads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_dataset_uploads_version_id"), ["version_id"], unique=False)
        batch_op.create_index(
            "uq_dataset_uploads_open",
            ["version_id", "path"],
            unique=True,
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("dataset_uploads", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_dataset_uploads_open",
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        )
        batch_op.drop_index(batch_op.f("ix_dataset_uploads_version_id"))

    op.drop_table("dataset_uploads")
    with op.batch_alter_table("dataset_replicas", schema=None) as batch_op:
        batch_op.drop_index("uq_dataset_replicas")
        batch_op.drop_index(batch_op.f("ix_dataset_replicas_version_id"))
        batch_op.drop_index(batch_op.f("ix_dataset_replicas_source_id"))

    op.drop_table("dataset_replicas")
    with op.batch_alter_table("dataset_files", schema=None) as batch_op:
        batch_op.drop_index("uq_dataset_files_path")
        batch_op.drop_index(batch_op.f("ix_dataset_files_version_id"))

    op.drop_table("dataset_files")
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_index("uq_dataset_versions_number")
        batch_op.drop_index(batch_op.f("ix_dataset_versions_dataset_id"))

    op.drop_table("dataset_versions")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_datasets_name_live",
            sqlite_where=sa.text("deleted_at IS NULL"),
            postgresql_where=sa.text("deleted_at IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_datasets_workspace_id"))

    op.drop_table("datasets")
    op.drop_table("storage_sources")
