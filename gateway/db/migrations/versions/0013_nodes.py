"""nodes: the GPU nodes (Slurm NodeName = Salt minion id), their one-time bootstrap tokens (by nonce, spent once),
provision runs as leased durable jobs, each run's nodes (their Salt jid and outcome) and per-state results

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 19:06:25.323442
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gateway.db.base import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("states", sa.JSON(), nullable=False),
        sa.Column("test", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=128), nullable=True),
        sa.Column("lease_until", UTCDateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_node_runs_created_by_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_runs")),
    )
    with op.batch_alter_table("node_runs", schema=None) as batch_op:
        batch_op.create_index("ix_node_runs_due", ["status", "next_attempt_at"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("gpu_type", sa.String(length=32), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("gpu_detect", sa.Boolean(), nullable=False),
        sa.Column("key_state", sa.String(length=16), nullable=False),
        sa.Column("bootstrapped_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.Column(
            "updated_at", UTCDateTime(timezone=True), server_default=sa.text("(CURRENT_TIMESTAMP)"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_nodes_created_by_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("name", name=op.f("uq_nodes_name")),
    )
    op.create_table(
        "node_bootstrap_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("issued_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_node_bootstrap_tokens_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_bootstrap_tokens")),
        sa.UniqueConstraint("nonce", name=op.f("uq_node_bootstrap_tokens_nonce")),
    )
    with op.batch_alter_table("node_bootstrap_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_bootstrap_tokens_node_id"), ["node_id"], unique=False)

    op.create_table(
        "node_run_targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=True),
        sa.Column("node_name", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("jid", sa.String(length=32), nullable=True),
        sa.Column("submitted_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("retcode", sa.Integer(), nullable=True),
        sa.Column("states_total", sa.Integer(), nullable=False),
        sa.Column("states_changed", sa.Integer(), nullable=False),
        sa.Column("states_failed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_node_run_targets_node_id_nodes"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["node_runs.id"], name=op.f("fk_node_run_targets_run_id_node_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_run_targets")),
    )
    with op.batch_alter_table("node_run_targets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_run_targets_finished_at"), ["finished_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_run_targets_node_id"), ["node_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_run_targets_submitted_at"), ["submitted_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_node_run_targets_run_id"), ["run_id"], unique=False)
        batch_op.create_index("uq_node_run_targets", ["run_id", "node_id"], unique=True)
        batch_op.create_index(
            "uq_node_run_targets_open",
            ["node_id"],
            unique=True,
            sqlite_where=sa.text("status IN ('queued', 'running')"),
            postgresql_where=sa.text("status IN ('queued', 'running')"),
        )

    op.create_table(
        "node_state_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("state_id", sa.String(length=255), nullable=False),
        sa.Column("sls", sa.String(length=255), nullable=True),
        sa.Column("function", sa.String(length=128), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("result", sa.Boolean(), nullable=True),
        sa.Column("changed", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("run_num", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["node_run_targets.id"],
            name=op.f("fk_node_state_results_target_id_node_run_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_state_results")),
    )
    with op.batch_alter_table("node_state_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_state_results_target_id"), ["target_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("node_state_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_state_results_target_id"))

    op.drop_table("node_state_results")
    with op.batch_alter_table("node_run_targets", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_node_run_targets_open",
            sqlite_where=sa.text("status IN ('queued', 'running')"),
            postgresql_where=sa.text("status IN ('queued', 'running')"),
        )
        batch_op.drop_index("uq_node_run_targets")
        batch_op.drop_index(batch_op.f("ix_node_run_targets_run_id"))
        batch_op.drop_index(batch_op.f("ix_node_run_targets_submitted_at"))
        batch_op.drop_index(batch_op.f("ix_node_run_targets_node_id"))
        batch_op.drop_index(batch_op.f("ix_node_run_targets_finished_at"))

    op.drop_table("node_run_targets")
    with op.batch_alter_table("node_bootstrap_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_bootstrap_tokens_node_id"))

    op.drop_table("node_bootstrap_tokens")
    op.drop_table("nodes")
    with op.batch_alter_table("node_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_node_runs_due")

    op.drop_table("node_runs")
