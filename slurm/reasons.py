"""What Slurm's pending reasons mean, in words a researcher reads (``squeue``'s ``%r``; ``scontrol``'s Reason).

Quota reasons name the workspace's GrpTRES (the foundation's quotas, enforced by Slurm); ``AssocGrpCpuLimit`` is
also how an overdue workspace's block shows (GrpTRES ``cpu=0``, gateway.workspaces.slurm_sync.BLOCKED).
"""

from __future__ import annotations

_QUOTA = "waiting: the workspace's {what} quota (GrpTRES {tres}) is in use by its other jobs"
REASONS = {
    "AssocGrpGRES": _QUOTA.format(what="GPU", tres="gres/gpu"),
    "AssocGrpGRESMinutes": "waiting: the workspace's GPU-minutes limit (GrpTRESMins gres/gpu) is used up",
    "AssocGrpGRESRunMinutes": "waiting: the workspace's running GPU-minutes limit (GrpTRESRunMins) is reached",
    "AssocGrpCpuLimit": _QUOTA.format(what="CPU", tres="cpu")
    + ", or the workspace is overdue and blocked in Slurm until it is topped up",
    "AssocGrpMemLimit": _QUOTA.format(what="memory", tres="mem"),
    "AssocGrpNodeLimit": _QUOTA.format(what="node", tres="node"),
    "AssocGrpJobsLimit": "waiting: the workspace runs as many jobs as its limit (GrpJobs) allows",
    "AssocGrpSubmitJobsLimit": "the workspace has as many jobs queued as its limit (GrpSubmitJobs) allows",
    "AssocMaxJobsLimit": "waiting: the user runs as many jobs in this workspace as allowed (MaxJobs)",
    "QOSGrpGRES": "waiting: the QOS's GPU limit is in use",
    "QOSMaxGRESPerUser": "waiting: the QOS's per-user GPU limit is in use",
    "Resources": "waiting for free resources (nodes, GPUs, CPUs or memory)",
    "Priority": "waiting: jobs of higher priority are ahead of it",
    "Dependency": "waiting for the jobs it depends on",
    "DependencyNeverSatisfied": "its dependency can never be satisfied: it will not start",
    "BeginTime": "waiting for its begin time",
    "JobHeldUser": "held by its user (release it to let it start)",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "a node it asked for is unavailable (down, drained or reserved)",
    "PartitionTimeLimit": "its time limit exceeds the partition's",
    "PartitionDown": "its partition is down",
    "Reservation": "waiting for its reservation",
    "QOSMaxWallDurationPerJobLimit": "its time limit exceeds what its QOS allows",
}


def explain(reason: str | None) -> str | None:
    """The reason in words, or None for a reason that needs none (``None``) or that is not known here."""
    if not reason or reason == "None":
        return None
    return REASONS.get(reason.split(",", 1)[0].strip())
