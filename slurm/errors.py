"""Slurm's refusals as typed exceptions; the message Slurm gave is always kept."""

from __future__ import annotations


class SlurmError(Exception):
    """A Slurm command failed. ``message`` is what Slurm said."""

    def __init__(self, message: str, *, command: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.command = command


class SlurmUnavailable(SlurmError):
    """The controller (or slurmdbd) did not answer: state is unknown, nothing is known to be gone."""


class SubmitRejected(SlurmError):
    """sbatch refused the job."""


class InvalidAccount(SubmitRejected):
    pass


class InvalidPartition(SubmitRejected):
    pass


class InvalidQos(SubmitRejected):
    pass


class NodeConfigUnavailable(SubmitRejected):
    """No node could ever run this request (e.g. more GPUs than any node has)."""


class QosLimitExceeded(SubmitRejected):
    pass


class JobNotFound(SlurmError):
    pass


class AccessDenied(SlurmError):
    pass


_PATTERNS: list[tuple[str, type[SlurmError]]] = [
    ("invalid account", InvalidAccount),
    ("invalid partition", InvalidPartition),
    ("invalid qos", InvalidQos),
    ("requested node configuration is not available", NodeConfigUnavailable),
    ("qosmax", QosLimitExceeded),
    ("job violates accounting/qos policy", QosLimitExceeded),
    ("invalid job id", JobNotFound),
    ("access/permission denied", AccessDenied),
    ("access denied", AccessDenied),
    ("unable to contact slurm controller", SlurmUnavailable),
    ("connection refused", SlurmUnavailable),
    ("socket timed out", SlurmUnavailable),
    ("slurm_persist_conn_open", SlurmUnavailable),
    # the connection broke mid-request: whether it was carried out is unknown
    ("zero bytes were transmitted or received", SlurmUnavailable),
    # slurmrestd's words for slurmdbd out of reach (ESLURM_DB_CONNECTION)
    ("unable to connect to database", SlurmUnavailable),
]
# What slurmctld says when someone changes (holds, releases) a job that is not theirs (ESLURM_USER_ID_MISSING);
# on a submission the same words mean the submitting user is unknown, a refusal of the job.
_CONTROL_PATTERNS: list[tuple[str, type[SlurmError]]] = [("invalid user id", AccessDenied)]


def classify(stderr: str, *, command: str = "", submit: bool = False) -> SlurmError:
    """The most specific error for what a Slurm command printed on failure."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    message = lines[-1] if lines else "failed without a message"
    for prefix in (
        "sbatch: error: ",
        "scancel: error: ",
        "scontrol: error: ",
        "squeue: error: ",
        "sacct: error: ",
        "sacctmgr: error: ",
        "Batch job submission failed: ",
    ):
        message = message.removeprefix(prefix)
    lowered = stderr.lower()
    for needle, cls in _PATTERNS if submit else [*_PATTERNS, *_CONTROL_PATTERNS]:
        if needle in lowered:
            return cls(message, command=command)
    return (SubmitRejected if submit else SlurmError)(message, command=command)
