"""Schemathesis hooks for test_schemathesis: which 400s a schema-valid request may get.

The document states every rule a request body must follow on its own. What it cannot state is the state the
gateway and the cluster are in (who is asking, the workspace's quota, the GPU types and partitions Slurm has,
which jobs exist) and a few rules across fields that JSON Schema has no words for (one number below another).
Operations where those apply let ``positive_data_acceptance`` pass a 400 (test_schemathesis's config); this
check then holds each such 400 to one of the rules named here, so any other refusal of a schema-valid request
still fails the run.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis

JOBS = (
    r"Slurm refused the job: .+",  # its partitions, QOS, accounts, nodes, limits
    r"\d+ .+ requested; the workspace quota allows \d+",
    r"--mem=0 \(all of a node's memory\) cannot be checked against the workspace's memory quota: give a size",
    r"no job [0-9a-f]{32} submitted to Slurm in this workspace",  # a gateway job id in a dependency
    r"the maximum node count is below the minimum",  # max_nodes < nodes
    r"--gpus-per-task used without either --gpus or -n/--ntasks is not allowed\.",  # in words only (JobCreate)
    r".+: ranges run upwards, steps are at least 1",  # an array's 5-3 or 0-3:0, or more tasks than allowed
    r"larger than \d+ bytes",  # a script or environment counted in UTF-8 bytes
    r"this cluster runs no container runtime; remove the image",
)
QUOTA = (
    r"per-type GPU limits exceed the total of \d+: .+",
    r"the cluster has no GPU of type .+",
)
ENVIRONMENTS = (
    *JOBS,  # a start is a job
    r"a GPU type without GPUs: give gpus too",  # across fields
    r"the workspace's quota of \d+ concurrent environments is reached: stop one first",
)
SSH_KEYS = (  # what only parsing the key's base64 data can tell
    r"(the key|the public key|not an OpenSSH public key|an Ed25519|RSA keys|not a valid RSA|a security key|"
    r"certificates are not accepted|this is an? |a PEM key|send one key line|you have \d+ SSH keys).*",
)
DATES = (r"not a date-time: .+",)  # e.g. day 31 of a 30-day month, year 0: the pattern cannot know
BILLING_REPORT = (*DATES, r"'to' must be after 'from'")
PRICES = (
    r"a price cannot start in the past: what was charged keeps its prices",
    r"Invalid RFC3339 encoded datetime",  # msgspec's parser takes fewer forms than JSON Schema's date-time
    r"valid_from needs a time zone offset",
)
TOPUPS = (r"an adjustment cannot be zero", r"a (topup|credit|refund) must be positive", r"amount too large")
STORAGE_SOURCES = (  # S3's bucket rules beyond the pattern; a name already taken
    r"a bucket name has no '\.\.', '\.-' or '-\.'",
    r"a bucket name is not an IP address",
    r"storage source .+ already exists",
)
DATASETS = (  # what the state decides: workspaces to share with, the version's paths, the stores there are
    r"no workspace .+",
    r"a relative path without empty, '\.' or '\.\.' segments",
    r"no enabled storage source .+",
    r"storage source .+ is down",
)
SYNC_TASKS = (  # across fields (explicit nulls pass the schema's alternatives)
    r"give version_id, or dataset_id and version(: not both)?",
    r"a two-way sync is incremental \(each direction copies what its target lacks\)",
)
STATEFUL: dict[str, tuple[str, ...]] = {
    **{
        f"{method} /api/v1/workspaces/{{ws}}/{kind}s/{{dataset_id}}{tail}": DATASETS
        for kind in ("dataset", "model")
        for method, tail in (
            ("PATCH", ""),
            ("POST", "/versions/{version}/uploads"),
            ("GET", "/versions/{version}/download-url"),
            ("POST", "/versions"),
        )
    },
    "POST /api/v1/sync-tasks": SYNC_TASKS,
    "POST /api/v1/storage-sources": STORAGE_SOURCES,
    "POST /api/v1/prices": PRICES,
    "POST /api/v1/workspaces/{ws}/billing/topups": TOPUPS,
    "GET /api/v1/workspaces/{ws}/billing/records": DATES,
    "GET /api/v1/workspaces/{ws}/billing/report": BILLING_REPORT,
    "POST /api/v1/workspaces/{ws}/environments": ENVIRONMENTS,
    "PATCH /api/v1/workspaces/{ws}/environments/{environment_id}": ENVIRONMENTS,
    "POST /api/v1/me/ssh-keys": SSH_KEYS,
    "PATCH /api/v1/users/{name}": (r"you cannot remove your own admin rights or disable yourself",),
    "PUT /api/v1/workspaces/{ws}/quota": QUOTA,
    "PATCH /api/v1/workspaces/{ws}/quota": QUOTA,
    "POST /api/v1/workspaces/{ws}/jobs": JOBS,
    "POST /api/v1/workspaces/{ws}/jobs/test": JOBS,
    "GET /api/v1/workspaces/{ws}/jobs/{job_id}/logs": (  # a task of a single job, or none of an array
        r"this job is not an array",
        r"this job is an array: say which task's output to read",
    ),
}
"""Operation -> the refusals (400, each ``errors[].message``) a schema-valid request may get from it."""


def _messages(response: Any) -> list[str]:
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [str(e.get("message", "")) for e in errors or [] if isinstance(e, dict)]


@schemathesis.check
def refused_only_by_state(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request that gets a 400 where one is passed names one of the rules of STATEFUL."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    rules = STATEFUL.get(case.operation.label)
    if rules is None:
        return None  # positive_data_acceptance judges it
    messages = _messages(response)
    unnamed = [m for m in messages if not any(re.fullmatch(rule, m) for rule in rules)]
    if unnamed or not messages:
        raise AssertionError(
            f"A schema-valid request was refused for a reason the document could state: {unnamed or response.text}"
        )
    return None
