"""gateway instance

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:35:46.743279
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import gateway.db.base

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gateway_instance",
        sa.Column("singleton", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", gateway.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("singleton", name=op.f("pk_gateway_instance")),
    )


def downgrade() -> None:
    op.drop_table("gateway_instance")
