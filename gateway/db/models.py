"""Imports every domain's models so ``Base.metadata`` is complete (Alembic, tests)."""

from gateway.accounts.models import ApiToken, User
from gateway.audit.models import AuditEntry
from gateway.cluster.models import ClusterSnapshot
from gateway.db.base import Base
from gateway.jobs.models import TrainingJob
from gateway.workspaces.models import Member, Quota, Workspace

__all__ = ["ApiToken", "AuditEntry", "Base", "ClusterSnapshot", "Member", "Quota", "TrainingJob", "User", "Workspace"]
