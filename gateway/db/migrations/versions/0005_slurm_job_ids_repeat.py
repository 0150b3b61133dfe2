"""slurm job ids repeat

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:46:04.440755
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_jobs_slurm_job_id"), type_="unique")
        batch_op.create_index(batch_op.f("ix_jobs_slurm_job_id"), ["slurm_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_slurm_job_id"))
        batch_op.create_unique_constraint(batch_op.f("uq_jobs_slurm_job_id"), ["slurm_job_id"])
