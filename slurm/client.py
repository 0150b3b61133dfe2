"""What the gateway needs from Slurm, whatever the transport (CLI tools or slurmrestd)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

import msgspec

from slurm.errors import SlurmError
from slurm.records import AccountingRecord, Association, Job, Node, Partition

KEEP_ATTEMPTS = 5


async def until_kept(add: Callable[[], Awaitable[None]], kept: Callable[[], Awaitable[bool]], what: str) -> None:
    """Add, then look, until slurmdbd lists what was added.

    slurmdbd 22.05 answers success to concurrent association adds and keeps only some of them (seen here: six
    parallel ``sacctmgr add user``, all "Adding User(s)", two associations kept), whether they come through
    sacctmgr or slurmrestd; the gateway's API and worker add associations concurrently."""
    for attempt in range(KEEP_ATTEMPTS):
        await add()
        if await kept():
            return
        await asyncio.sleep(0.1 * 2**attempt)
    raise SlurmError(f"slurmdbd did not keep {what} after {KEEP_ATTEMPTS} tries", command="slurmdbd")


class Submission(msgspec.Struct, frozen=True, kw_only=True):
    """A batch script to run as ``user`` under ``account``. Options are sbatch long options without ``--``."""

    user: str
    account: str
    script: str
    work_dir: str
    options: Mapping[str, str | None] = msgspec.field(default_factory=dict)
    """e.g. ``{"comment": "rgpu:42", "partition": "gpu", "hold": None}`` (None: a flag)."""
    environment: Mapping[str, str] | None = None
    """The submitter's environment (:mod:`slurm.environment`), sbatch's own; None: the gateway's minimal one."""
    secrets: Mapping[str, str] = msgspec.field(default_factory=dict)
    """Variables given to the job whatever the environment (never filtered, never on a command line, never
    recorded): e.g. an environment session's callback token."""


class SlurmClient(Protocol):
    async def submit(self, submission: Submission) -> int:
        """Submit and return the Slurm job id; raises a ``SubmitRejected`` subclass when sbatch refuses."""
        ...

    async def test_only(self, submission: Submission) -> str:
        """What ``sbatch --test-only`` answers (e.g. ``Job 12 to start at ... on nodes n1``); nothing is submitted."""
        ...

    async def cancel(self, job_id: int, *, user: str) -> None: ...

    async def hold(self, job_id: int, *, user: str) -> None: ...

    async def release(self, job_id: int, *, user: str) -> None: ...

    async def jobs(self) -> list[Job]:
        """Every job the controller knows, in one call (the poller's snapshot)."""
        ...

    async def job(self, job_id: int) -> list[Job]:
        """The controller's entries for one job now (an array's: its tasks); ``[]`` once it has forgotten it."""
        ...

    async def nodes(self) -> list[Node]:
        """Every node, in one call (the cluster snapshot)."""
        ...

    async def partitions(self) -> list[Partition]:
        """Every partition, in one call (the cluster snapshot)."""
        ...

    async def update_node(self, name: str, *, state: str, reason: str | None = None) -> None:
        """``scontrol update nodename=NAME state=STATE [reason=REASON]`` as the gateway (a Slurm operator):
        ``drain`` (a reason is required), ``resume``, ``undrain``."""
        ...

    async def cluster_name(self) -> str | None:
        """The cluster's ``ClusterName`` (None where the backend cannot tell)."""
        ...

    async def accounting(self, since: datetime, accounts: Sequence[str] | None = None) -> list[AccountingRecord]:
        """Accounting records of every job active or ended since ``since`` (under ``accounts`` only, when given:
        billing reads its workspaces' accounts, not the whole cluster's), in one call."""
        ...

    async def ensure_account(self, account: str, *, description: str = "") -> None: ...

    async def ensure_association(self, user: str, account: str) -> None: ...

    async def set_account_limits(self, account: str, grp_tres: Mapping[str, int | None]) -> None:
        """GrpTRES of the account; ``None`` lifts a limit."""
        ...

    async def remove_association(self, user: str, account: str) -> None: ...

    async def remove_account(self, account: str) -> None: ...

    async def associations(self, account: str | None = None) -> list[Association]: ...

    async def close(self) -> None:
        """Let go of connections (the REST backend's HTTP pool); the client is not used afterwards."""
        ...
