"""environment sessions started from JupyterHub keep the single-user server's variables (encrypted)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("environment_sessions") as batch:
        batch.add_column(sa.Column("hub_env", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("environment_sessions") as batch:
        batch.drop_column("hub_env")
