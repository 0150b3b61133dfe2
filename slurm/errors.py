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
]


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
    for needle, cls in _PATTERNS:
        if needle in lowered:
            return cls(message, command=command)
    return (SubmitRejected if submit else SlurmError)(message, command=command)
