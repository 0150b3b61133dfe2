"""The REST backend: slurmrestd (openapi v0.0.38 and dbv0.0.38, Slurm 22.05), held to the CLI backend's behaviour.

Every request carries a JWT of the user it concerns (slurmrestd runs it as that user, so Slurm itself checks
who may cancel what); jobs, accounting and accounts are read and managed with the token of ``admin_user``.
Tokens come from a :class:`~slurm.tokens.TokenCache`.

Submission makes the job ``sbatch`` would make from the same :class:`~slurm.client.Submission` (the CLI
backend runs ``sbatch --account=A --chdir=W --OPTION... < script``), which slurmrestd does not do by itself:

* it ignores ``#SBATCH`` lines, so they are read here (:func:`slurm.directives.script_directives`, which
  reads them as sbatch 22.05 does) and merged under the submission's own options, as sbatch merges its
  command line over the script's directives;
* option values are passed as the text sbatch would read: slurmrestd hands every job field to the same
  option parsers as sbatch (``slurm_process_option_data``), so ``"time_limit": "1-00:00"`` means what
  ``--time=1-00:00`` means;
* it takes the job's environment only from the request, so :func:`submit_environment` builds what sbatch
  would send from the CLI backend's environment (``PATH``, ``LANG``, ``SLURM_CONF`` and the user's login
  variables) plus what sbatch adds of its own process (``SLURM_SUBMIT_DIR``, ``SLURM_SUBMIT_HOST``,
  ``SLURM_PRIO_PROCESS``, ``SLURM_UMASK``, ``SLURM_RLIMIT_*``), and ``--export`` as sbatch applies it;
* a job without a name is named ``sbatch``, as sbatch names a script read from its standard input.

An option or directive that cannot be mapped is refused with its name, never dropped. What still differs from
sbatch's job (tests/integration/slurm/test_client_contract.py compares ``scontrol show job`` and the job's
environment): ``AllocNode:Sid`` names slurmrestd's peer; slurmrestd puts ``SLURM_JOB_NAME`` in the
environment of a job without a name too (``sbatch``); a job with a node count and CPUs per task but no task
count also gets ``SLURM_NTASKS`` (see :func:`_sbatch_tasks`). ``SubmitHost`` (umask, limits, niceness) is
taken once, when the client is made, where sbatch takes it at every submission.

Hold and release are ``POST /slurm/v0.0.38/job/{id}`` with ``{"hold": true}`` / ``{"hold": false}``:
v0.0.38 refuses a ``priority`` of 0 or INFINITE, but the hold flag sets them as ``scontrol hold|release`` do.

A gap of slurmrestd 22.05 (measured on 22.05.8): it cannot change the limits of an existing account
association. ``POST /slurmdb/v0.0.38/associations`` always sends a parent account for an account's own
association, slurmdbd treats that as a move, and skips the whole row (limits included) when the account is
already the first child of that parent; when it is not, it moves it there first. So
:meth:`RestSlurmClient.set_account_limits` goes through a fallback (``limits=``, e.g. the CLI backend), and
refuses with that reason where there is none.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import shutil
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import httpx
import msgspec

from slurm.cli import SBATCH_OPTIONS, CliSlurmClient, command_env, login_env, posix_user
from slurm.client import Submission, until_kept
from slurm.dialects import Dialect, for_version
from slurm.directives import OPTIONS, DirectiveError, script_directives
from slurm.environment import submitted
from slurm.errors import SlurmError, SlurmUnavailable, SubmitRejected, classify
from slurm.records import AccountingRecord, Association, Job, Node, Partition
from slurm.resources import Request, implied_tasks
from slurm.tokens import ScontrolTokens, SignedTokens, TokenCache

API = "v0.0.38"
_SLURM = f"/slurm/{API}"
_SLURMDB = f"/slurmdb/{API}"

# sbatch long option -> field of the v0.0.38 job description (value passed as the text sbatch reads)
JOB_FIELDS: dict[str, str] = {
    "job-name": "name",
    "nodes": "nodes",
    "ntasks": "tasks",
    "ntasks-per-node": "tasks_per_node",
    "cpus-per-task": "cpus_per_task",
    "gres": "gres",
    "gpus": "gpus",
    "gpus-per-node": "gpus_per_node",
    "mem": "memory_per_node",
    "mem-per-cpu": "memory_per_cpu",
    "time": "time_limit",
    "partition": "partition",
    "qos": "qos",
    "account": "account",
    "array": "array",
    "dependency": "dependency",
    "output": "standard_output",
    "error": "standard_error",
    "comment": "comment",
    "container": "container",
    "chdir": "current_working_directory",
    "gpus-per-task": "gpus_per_task",
    "ntasks-per-socket": "tasks_per_socket",
    "mincpus": "minimum_cpus_per_node",
    "cpus-per-gpu": "cpus_per_gpu",
    "mem-per-gpu": "memory_per_gpu",
    "ntasks-per-gpu": "ntasks_per_gpu",
    "gpu-bind": "gpu_binding",
    "mail-type": "mail_type",
    "mail-user": "mail_user",
    "constraint": "constraints",
    "signal": "signal",
    "open-mode": "open_mode",
    "nodelist": "nodelist",
    "exclude": "exclude_nodes",
    "begin": "begin_time",
    "deadline": "deadline",
    "time-min": "time_minimum",
    "reservation": "reservation",
    "nice": "nice",
    "wckey": "wckey",
    "distribution": "distribution",
    "licenses": "licenses",
    "kill-on-invalid-dep": "kill_on_invalid_dependency",
    "get-user-env": "get_user_environment",
}
"""(Each name checked against slurmrestd 22.05.8: it accepts some fields by sbatch's option name, e.g.
``nodelist``, refuses others, e.g. ``exclude`` and ``required_nodes``.)"""
_FLAGS = frozenset({"hold", "exclusive", "requeue", "no-requeue"})
"""Options without a value (``exclusive`` may have one: ``--exclusive=user``)."""
_FLAG_FIELDS = {"hold": "hold", "requeue": "requeue", "no-requeue": "no_requeue"}
MAPPED = frozenset(JOB_FIELDS) | _FLAGS | {"export"}
"""Every sbatch option this backend can pass on; ``export`` becomes the environment."""
DIRECTIVES: dict[str, tuple[str | None, bool]] = {
    **{name: spec for name, spec in OPTIONS.items() if name in MAPPED},
    "comment": (None, True),
    "container": (None, True),
    "exclusive": (None, False),
    "requeue": (None, False),
    "no-requeue": (None, False),
}
"""The ``#SBATCH`` options read from a script (long name -> short flag, takes a value)."""

_RLIMITS = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK", "AS")
_ULONG = 2**64
_NOTHING_TO_DO = (
    # what sacctmgr says as "Nothing deleted", which the CLI backend tolerates
    1900,  # SLURM_NO_CHANGE_IN_DATA
    9003,  # ESLURM_REST_EMPTY_RESULT, "Nothing found"
)
_NOTHING_FOUND = 9003
_INVALID_JOB_ID = 2017
_NO_USER_FIELD = "Missing required field 'user'"
"""dbv0.0.38 reports this for an account's own association (which has no user), and then adds it anyway."""


class SubmitHost(msgspec.Struct, frozen=True, kw_only=True):
    """What sbatch passes on of the process it runs in; the CLI backend's sbatch is the gateway's child."""

    hostname: str
    priority: int = 0
    umask: int | None = None
    rlimits: Mapping[str, int] = msgspec.field(default_factory=dict)
    """Soft limits by Slurm's name (``NOFILE``...), RLIM_INFINITY as 2**64-1 (C's unsigned long)."""

    @classmethod
    def of_this_process(cls) -> SubmitHost:
        rlimits = {}
        for name in _RLIMITS:
            soft, _ = resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))
            rlimits[name] = soft % _ULONG  # RLIM_INFINITY is -1 here
        return cls(
            hostname=socket.gethostname(),
            priority=os.getpriority(os.PRIO_PROCESS, 0),
            umask=_umask(),
            rlimits=rlimits,
        )


def _umask() -> int | None:
    """The process's umask without setting it (``os.umask`` would change it for every thread a moment)."""
    with contextlib.suppress(OSError, ValueError):  # no /proc (not Linux), or a line not as expected
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split(":", 1)[1].strip(), 8)
    return None


def submit_environment(
    base: Mapping[str, str], export: str | None, host: SubmitHost, job: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment sbatch would send, started with ``base``, for ``--export=export`` (None: ALL).

    sbatch 22.05 adds its own ``SLURM_*`` variables (those of ``host``, and ``job``: what
    :func:`sbatch_job_env` derives from the options), and with an export other than ``ALL`` sends only the
    ``SLURM_*`` ones plus those listed (``NAME=value``, or ``NAME`` from its environment; ``ALL`` in the
    list: everything), setting ``SLURM_EXPORT_ENV`` and ``SLURM_GET_USER_ENV=1`` (the node then loads the
    user's login environment under them).
    """
    own = {
        "SLURM_PRIO_PROCESS": str(host.priority),
        "SLURM_SUBMIT_DIR": base.get("PWD", "/"),  # the CLI backend runs sbatch in the submitter's PWD, or /
        "SLURM_SUBMIT_HOST": host.hostname,
        **({"SLURM_UMASK": f"{host.umask:04o}"} if host.umask is not None and "SLURM_UMASK" not in base else {}),
        **{f"SLURM_RLIMIT_{name}": str(value) for name, value in host.rlimits.items()},
        **(job or {}),
    }
    if export is None or export.upper() == "ALL":
        return {**base, **own}
    env = {name: value for name, value in base.items() if name.startswith("SLURM_")}
    if export.upper() != "NONE":
        for item in export.split(","):
            name, eq, value = item.partition("=")
            if eq:
                env[name] = value
            elif name.upper() == "ALL":
                env.update(base)
            elif name in base:
                env[name] = base[name]
    return {**env, **own, "SLURM_EXPORT_ENV": export, "SLURM_GET_USER_ENV": "1"}


# what sbatch exports of its options into the job's environment, where slurmd does not set it from the job
_JOB_ENV = {
    "cpus-per-task": "SLURM_CPUS_PER_TASK",
    "ntasks-per-node": "SLURM_NTASKS_PER_NODE",
    "gpus": "SLURM_GPUS",
    "gpus-per-node": "SLURM_GPUS_PER_NODE",
}


def sbatch_job_env(options: Mapping[str, str | None]) -> dict[str, str]:
    """The ``SLURM_*`` variables sbatch sets from its options (its numbers as it prints them: ``02`` is ``2``)."""
    return {
        variable: str(int(value)) if value.isdigit() else value
        for option, variable in _JOB_ENV.items()
        if (value := options.get(option))
    }


_NODE_COUNT = re.compile(r"^(\d+)(?:-(\d+))?$")


def _count(value: str | None) -> int | None:
    """A plain count as sbatch reads one (``[type:]N`` for GPUs); None for anything else."""
    text = (value or "").rpartition(":")[2]
    return int(text) if text.isdigit() else None


def _sbatch_tasks(options: Mapping[str, str | None]) -> str | None:
    """The task count sbatch works out itself where none is given (:func:`slurm.resources.implied_tasks`).

    slurmrestd does none of this (a job with ``-N 2 -c 2`` would get 2 CPUs, not 4), so the count is sent;
    where sbatch only implies it (one task per node) that also makes slurmd set ``SLURM_NTASKS``, which
    sbatch's job has not.
    """
    if options.get("ntasks") is not None:
        return None
    nodes = options.get("nodes")
    match = _NODE_COUNT.fullmatch(nodes or "1")
    if match is None or (match[2] is not None and match[1] != match[2]):
        return None  # a range of node counts: no fixed count to work from, as in sbatch
    request = Request(
        nodes=int(match[1]) if nodes is not None else None,
        ntasks_per_node=_count(options.get("ntasks-per-node")),
        cpus_per_task=_count(options.get("cpus-per-task")),
        gpus=_count(options.get("gpus")),
        ntasks_per_gpu=_count(options.get("ntasks-per-gpu")),
    )
    count = implied_tasks(request)
    return None if count is None else str(count)


def sbatch_options(submission: Submission) -> dict[str, str | None]:
    """The options sbatch would act on: the script's ``#SBATCH`` lines under the CLI backend's command line.

    Raises ValueError for a submission option that is not allowed (as the CLI backend does), SubmitRejected
    for a directive sbatch would refuse or this backend cannot pass on.
    """
    unknown = sorted(set(submission.options) - SBATCH_OPTIONS)
    if unknown:
        raise ValueError(f"sbatch options not allowed: {', '.join(unknown)}")
    try:
        directives, unsupported = script_directives(submission.script, DIRECTIVES)
    except DirectiveError as exc:
        raise SubmitRejected(str(exc), command="slurmrestd") from None
    if unsupported:
        raise SubmitRejected(
            f"#SBATCH options the REST backend cannot pass on to slurmrestd: {', '.join(sorted(set(unsupported)))}",
            command="slurmrestd",
        )
    merged: dict[str, str | None] = {}
    for name, value in directives.items():
        if isinstance(value, list):  # only repeatable options are lists, and none of them is in DIRECTIVES
            raise SubmitRejected(f"#SBATCH --{name} given more than once", command="slurmrestd")
        merged[name] = value
    merged.update({"account": submission.account, "chdir": submission.work_dir})
    merged.update(submission.options)
    return merged


def job_description(options: Mapping[str, str | None], environment: Mapping[str, str]) -> dict[str, Any]:
    """sbatch options (as :func:`sbatch_options` gives them) -> the v0.0.38 job description."""
    job: dict[str, Any] = {"name": "sbatch", "environment": dict(environment)}
    if tasks := _sbatch_tasks(options):
        job["tasks"] = tasks
    nodes, ntasks = _count(options.get("nodes")), _count(options.get("ntasks"))
    if nodes and ntasks and ntasks < nodes and (options.get("nodes") or "").isdigit():
        options = {**options, "nodes": str(ntasks)}  # sbatch: "can't run 1 processes on 2 nodes, setting nnodes to 1"
    for name, value in options.items():
        if name == "export":
            continue  # already in the environment
        if name in _FLAG_FIELDS:
            if value is not None:
                raise SubmitRejected(f"option --{name} takes no value", command="slurmrestd")
            job[_FLAG_FIELDS[name]] = True
        elif name == "signal" and value is not None and value.upper().startswith(("B:", "RB:", "BR:")):
            raise SubmitRejected(
                f"--signal={value}: slurmrestd 22.05 cannot signal the batch shell alone (B:); use the CLI backend",
                command="slurmrestd",
            )
        elif name == "get-user-env":  # slurmrestd reads sbatch's text ("" for none; its boolean form fails)
            job["get_user_environment"] = value or ""
        elif name == "kill-on-invalid-dep":
            job["kill_on_invalid_dependency"] = (value or "").lower() in ("yes", "y", "1")
        elif name == "exclusive":
            job["exclusive"] = "exclusive" if value is None else value
        elif name in JOB_FIELDS:
            if value is None:
                raise SubmitRejected(f"option --{name} needs a value", command="slurmrestd")
            job[JOB_FIELDS[name]] = value
        else:
            raise SubmitRejected(f"the REST backend cannot pass on --{name}", command="slurmrestd")
    return job


def _describe(error: Mapping[str, Any]) -> str:
    text = str(error.get("error") or "").strip()
    description = str(error.get("description") or "").strip()
    if description and text and text.lower() in description.lower():
        return description
    if description and text:
        return f"{text} ({description})"
    return text or description or f"error {_number(error)}"


def _number(error: Mapping[str, Any]) -> int | None:
    number = error.get("error_number", error.get("error_code"))
    return number if isinstance(number, int) else None


def rest_error(errors: Sequence[Mapping[str, Any]], *, command: str = "slurmrestd", submit: bool = False) -> SlurmError:
    """slurmrestd's ``errors`` list as the most specific SlurmError, with every message Slurm gave (one line)."""
    parts = list(dict.fromkeys(_describe(e) for e in errors)) or ["failed without a message"]
    return classify("; ".join(parts), command=command, submit=submit)


def _tolerated(error: Mapping[str, Any], tolerate: Sequence[int | str]) -> bool:
    number, words = _number(error), _describe(error)
    return any(t == number if isinstance(t, int) else t in words for t in tolerate)


class _Errors(msgspec.Struct):
    errors: list[dict[str, Any]] = msgspec.field(default_factory=list)


class _Submitted(msgspec.Struct):
    job_id: int | None = None


class _Reply(NamedTuple):
    status: int
    content: bytes
    errors: list[dict[str, Any]]


class AccountLimits(Protocol):
    async def set_account_limits(self, account: str, grp_tres: Mapping[str, int | None]) -> None: ...


class RestSlurmClient:
    """:class:`~slurm.client.SlurmClient` over slurmrestd. ``close()`` it (or ``async with``) when done."""

    def __init__(
        self,
        url: str,
        *,
        tokens: TokenCache | None = None,
        slurm_conf: str | None = None,
        admin_user: str = "root",
        timeout: float = 60.0,
        version: str = "22.05",
        max_connections: int = 32,
        clusters: Sequence[str] | None = None,
        limits: AccountLimits | None = None,
        submit_host: SubmitHost | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``tokens``: default ``scontrol token`` (with ``slurm_conf``); ``admin_user``: whose token reads every
        job and manages accounts (root, the SlurmUser or a Slurm administrator); ``clusters``: where accounts
        are created (default: every cluster slurmdbd knows, as sacctmgr does); ``limits``: what sets GrpTRES,
        which slurmrestd 22.05 cannot (e.g. a :class:`~slurm.cli.CliSlurmClient`)."""
        self.url = url.rstrip("/")
        self.tokens = tokens or TokenCache(ScontrolTokens(slurm_conf=slurm_conf))
        self.slurm_conf = slurm_conf
        self._test_only: CliSlurmClient | None = None
        self.admin_user = admin_user
        self.timeout = timeout
        self.dialect: Dialect = for_version(version)
        self.clusters = list(clusters) if clusters is not None else None
        self.limits = limits
        self.submit_host = submit_host or SubmitHost.of_this_process()
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> RestSlurmClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- plumbing ------------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """Made on first use, inside the event loop that will use it."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.url, timeout=self.timeout, limits=self._limits, transport=self._transport
            )
        return self._client

    async def _send(
        self,
        method: str,
        path: str,
        *,
        user: str,
        body: object = None,
        params: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> _Reply:
        token = await self.tokens.get(user)
        headers = {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token}
        try:
            response = await self._http().request(method, path, headers=headers, json=body, params=params)
        except httpx.TimeoutException as exc:
            raise SlurmUnavailable(
                f"slurmrestd did not answer {method} {path} within {self.timeout:.0f} s", command="slurmrestd"
            ) from exc
        except httpx.TransportError as exc:
            raise SlurmUnavailable(f"cannot reach slurmrestd at {self.url}: {exc}", command="slurmrestd") from exc
        if response.status_code == httpx.codes.UNAUTHORIZED:
            # refused before anything was done: a new token, once
            self.tokens.invalidate(user)
            if retry:
                return await self._send(method, path, user=user, body=body, params=params, retry=False)
            raise SlurmError(
                f"slurmrestd refused the credentials of {user!r} (HTTP 401): {response.text.strip()[:200]}",
                command="slurmrestd",
            )
        try:
            errors = msgspec.json.decode(response.content, type=_Errors).errors if response.content else []
        except (msgspec.DecodeError, msgspec.ValidationError):
            errors = []
        return _Reply(response.status_code, response.content, errors)

    def _check(self, reply: _Reply, *, user: str, tolerate: Sequence[int | str] = (), submit: bool = False) -> _Reply:
        errors = [e for e in reply.errors if not _tolerated(e, tolerate)]
        if errors:
            if any("authentication" in _describe(e).lower() for e in errors):
                self.tokens.invalidate(user)  # e.g. an expired or re-keyed token: the next call gets a new one
            raise rest_error(errors, submit=submit)
        if reply.status >= 400 and not reply.errors:
            text = reply.content.decode(errors="replace").strip()[:200]
            cls = SlurmUnavailable if reply.status >= 500 else SlurmError
            raise cls(f"slurmrestd answered HTTP {reply.status}: {text}", command="slurmrestd")
        return reply

    async def _call(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        body: object = None,
        params: Mapping[str, str] | None = None,
        tolerate: Sequence[int | str] = (),
    ) -> _Reply:
        """A request as ``user`` (default the admin); Slurm's errors, but those tolerated, raise SlurmErrors."""
        user = user or self.admin_user
        reply = await self._send(method, path, user=user, body=body, params=params)
        return self._check(reply, user=user, tolerate=tolerate)

    # --- jobs ----------------------------------------------------------------------------------------

    async def submit(self, submission: Submission) -> int:
        options = sbatch_options(submission)
        login = login_env(posix_user(submission.user, command="slurmrestd"))
        base = {**command_env(self.slurm_conf), **login}
        if submission.environment is not None:  # sbatch's environment is the submitter's (slurm.environment)
            forced = {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}
            base = {**submitted(submission.environment), **forced}
        base = {**base, **submission.secrets}
        environment = submit_environment(base, options.get("export"), self.submit_host, sbatch_job_env(options))
        body = {"script": submission.script, "job": job_description(options, environment)}
        reply = await self._send("POST", f"{_SLURM}/job/submit", user=submission.user, body=body)
        try:
            job_id = msgspec.json.decode(reply.content, type=_Submitted).job_id if reply.content else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            job_id = None
        if job_id:
            # made: what errors came with it are notes (e.g. 2042 "Job is in held state"), as sbatch treats them
            return job_id
        self._check(reply, user=submission.user, submit=True)
        raise SubmitRejected(f"slurmrestd returned no job id (HTTP {reply.status})", command="slurmrestd")

    async def test_only(self, submission: Submission) -> str:
        """slurmrestd 22.05 has no test-only submission: ``sbatch --test-only`` as the user, through the CLI
        backend (the same script, options and environment; sbatch reads the directives this backend maps)."""
        if self._test_only is None:
            self._test_only = CliSlurmClient(slurm_conf=self.slurm_conf, timeout=self.timeout)
        return await self._test_only.test_only(submission)

    async def update_node(self, name: str, *, state: str, reason: str | None = None) -> None:
        """slurmrestd 22.05 cannot change a node (v0.0.38 has only GET /node): ``scontrol update`` through the
        CLI backend, as the gateway."""
        if self._test_only is None:
            self._test_only = CliSlurmClient(slurm_conf=self.slurm_conf, timeout=self.timeout)
        await self._test_only.update_node(name, state=state, reason=reason)

    async def cancel(self, job_id: int, *, user: str) -> None:
        # scancel says nothing (exit 0) about a job the controller does not know: neither do we
        await self._call("DELETE", f"{_SLURM}/job/{job_id}", user=user, tolerate=(_INVALID_JOB_ID,))

    async def hold(self, job_id: int, *, user: str) -> None:
        await self._call("POST", f"{_SLURM}/job/{job_id}", user=user, body={"hold": True})

    async def release(self, job_id: int, *, user: str) -> None:
        await self._call("POST", f"{_SLURM}/job/{job_id}", user=user, body={"hold": False})

    async def jobs(self) -> list[Job]:
        return self.dialect.parse_squeue((await self._call("GET", f"{_SLURM}/jobs")).content)

    async def job(self, job_id: int) -> list[Job]:
        reply = await self._call("GET", f"{_SLURM}/job/{job_id}", tolerate=(_INVALID_JOB_ID,))
        if not reply.content or any(_number(e) == _INVALID_JOB_ID for e in reply.errors):
            return []  # forgotten (or never known): as scontrol says "Invalid job id specified"
        return self.dialect.parse_squeue(reply.content)

    async def nodes(self) -> list[Node]:
        return self.dialect.parse_nodes((await self._call("GET", f"{_SLURM}/nodes")).content)

    async def partitions(self) -> list[Partition]:
        return self.dialect.parse_partitions_json((await self._call("GET", f"{_SLURM}/partitions")).content)

    async def cluster_name(self) -> str | None:
        """slurmrestd 22.05 does not say which cluster it serves: the one slurmdbd knows, if it knows one."""
        clusters = await self._all_clusters()
        return clusters[0] if len(clusters) == 1 else None

    async def accounting(self, since: datetime, accounts: Sequence[str] | None = None) -> list[AccountingRecord]:
        if accounts is not None and not accounts:
            return []
        # relative to slurmrestd's clock: an absolute time would be read in slurmrestd's time zone
        seconds = max(0, math.ceil(datetime.now(since.tzinfo).timestamp() - since.timestamp())) + 1
        params = {"start_time": f"now-{seconds}", "end_time": "now"}
        if accounts:
            params["account"] = ",".join(accounts)
        reply = await self._call("GET", f"{_SLURMDB}/jobs", params=params, tolerate=(_NOTHING_FOUND,))
        return self.dialect.parse_sacct(reply.content)

    # --- accounts and associations -------------------------------------------------------------------

    async def _all_clusters(self) -> list[str]:
        if self.clusters is not None:
            return self.clusters
        document = msgspec.json.decode((await self._call("GET", f"{_SLURMDB}/clusters")).content)
        return [str(c["name"]) for c in document.get("clusters") or [] if c.get("name")]

    async def _exists(self, path: str, key: str) -> bool:
        reply = await self._call("GET", path, tolerate=(_NOTHING_FOUND,))
        return bool(msgspec.json.decode(reply.content).get(key)) if reply.content else False

    async def ensure_account(self, account: str, *, description: str = "") -> None:
        """The account, and its association on every cluster (as ``sacctmgr add account``); idempotent."""
        have = {a.cluster for a in await self.associations(account) if a.user is None and a.partition is None}
        missing = [c for c in await self._all_clusters() if c not in have]
        if not missing:
            return

        async def add() -> None:
            if not await self._exists(f"{_SLURMDB}/account/{account}", "accounts"):
                record = {"name": account, "description": description or account, "organization": account}
                await self._call("POST", f"{_SLURMDB}/accounts", body={"accounts": [record]})
            rows = [{"account": account, "cluster": cluster, "parent_account": "root"} for cluster in missing]
            await self._call(
                "POST", f"{_SLURMDB}/associations", body={"associations": rows}, tolerate=(_NO_USER_FIELD,)
            )

        async def kept() -> bool:
            have = {a.cluster for a in await self.associations(account) if a.user is None and a.partition is None}
            return all(c in have for c in missing)

        await until_kept(add, kept, f"the account {account!r}")

    async def ensure_association(self, user: str, account: str) -> None:
        """``user`` in ``account`` wherever the account is (as ``sacctmgr add user U Account=A``); idempotent."""

        async def missing() -> list[str]:
            rows = [a for a in await self.associations(account) if a.partition is None]
            clusters = sorted({a.cluster for a in rows if a.user is None})
            if not clusters:
                raise SlurmError(f"account {account!r} does not exist", command="slurmdbd")
            return [c for c in clusters if not any(a.user == user and a.cluster == c for a in rows)]

        absent = await missing()
        if not absent:
            return
        if not await self._exists(f"{_SLURMDB}/user/{user}", "users"):
            await self._call("POST", f"{_SLURMDB}/users", body={"users": [{"name": user}]})

        async def add() -> None:
            associations = [{"account": account, "cluster": cluster, "user": user} for cluster in absent]
            await self._call("POST", f"{_SLURMDB}/associations", body={"associations": associations})

        async def kept() -> bool:
            nonlocal absent
            absent = await missing()
            return not absent

        await until_kept(add, kept, f"the association of {user!r} with {account!r}")

    async def set_account_limits(self, account: str, grp_tres: Mapping[str, int | None]) -> None:
        if not grp_tres:
            return
        if self.limits is None:
            raise SlurmError(
                "slurmrestd 22.05 cannot change the GrpTRES of an existing account: "
                "give RestSlurmClient a limits= fallback (e.g. the CLI backend)",
                command="slurmrestd",
            )
        await self.limits.set_account_limits(account, grp_tres)

    async def remove_association(self, user: str, account: str) -> None:
        params = {"account": account, "user": user}
        await self._call("DELETE", f"{_SLURMDB}/associations", params=params, tolerate=_NOTHING_TO_DO)

    async def remove_account(self, account: str) -> None:
        await self._call("DELETE", f"{_SLURMDB}/account/{account}", tolerate=_NOTHING_TO_DO)

    async def associations(self, account: str | None = None) -> list[Association]:
        params = {"account": account} if account else None
        reply = await self._call("GET", f"{_SLURMDB}/associations", params=params, tolerate=(_NOTHING_FOUND,))
        return self.dialect.parse_associations_json(reply.content)


def default_client() -> RestSlurmClient:
    """From the environment deploy/dev/slurm/up prints: ``REMOTEGPU_SLURMRESTD_URL``, ``SLURM_CONF``; tokens
    signed with ``REMOTEGPU_SLURM_JWT_KEY`` (a key file) where set, else minted by ``scontrol token``.
    Account limits go through the CLI backend (sacctmgr) where Slurm's commands are installed."""
    url = os.environ.get("REMOTEGPU_SLURMRESTD_URL")
    if not url:
        raise RuntimeError("REMOTEGPU_SLURMRESTD_URL is not set (e.g. http://127.0.0.1:6820)")
    slurm_conf = os.environ.get("SLURM_CONF")
    key = os.environ.get("REMOTEGPU_SLURM_JWT_KEY")
    source = SignedTokens.from_file(key) if key else ScontrolTokens(slurm_conf=slurm_conf)
    limits = CliSlurmClient(slurm_conf=slurm_conf) if shutil.which("sacctmgr") else None
    return RestSlurmClient(url, tokens=TokenCache(source), slurm_conf=slurm_conf, limits=limits)
