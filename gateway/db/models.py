"""Imports every domain's models so ``Base.metadata`` is complete (Alembic, tests)."""

from gateway.accounts.models import ApiToken, SshKey, User
from gateway.audit.models import AuditEntry
from gateway.billing.models import Balance, IngestCursor, LedgerEntry, Price, UsageRecord
from gateway.cluster.models import ClusterSnapshot
from gateway.datasets.models import Dataset, DatasetFile, DatasetVersion, Replica, StorageSource, Upload
from gateway.db.base import Base
from gateway.environments.models import Environment, EnvironmentEvent, EnvironmentSession, PortMapping
from gateway.jobs.models import TrainingJob
from gateway.nodes.models import BootstrapToken, Node, ProvisionRun, RunTarget, StateResult
from gateway.workspaces.models import Member, Quota, Workspace

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Balance",
    "Base",
    "BootstrapToken",
    "ClusterSnapshot",
    "Dataset",
    "DatasetFile",
    "DatasetVersion",
    "Environment",
    "EnvironmentEvent",
    "EnvironmentSession",
    "IngestCursor",
    "LedgerEntry",
    "Member",
    "Node",
    "PortMapping",
    "Price",
    "ProvisionRun",
    "Quota",
    "Replica",
    "RunTarget",
    "SshKey",
    "StateResult",
    "StorageSource",
    "TrainingJob",
    "Upload",
    "UsageRecord",
    "User",
    "Workspace",
]
