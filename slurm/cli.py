"""The CLI backend: Slurm's own commands, run as the user where the work is the user's.

Jobs are submitted as the user, never as the gateway's account: ``setpriv --reuid --regid --init-groups`` when
the gateway runs as root (the user's ids and groups, no PAM session: the cheapest way), ``runuser -u`` (with
the PAM session, as an admin typing it would), or ``sudo -n -u`` for a gateway that is not root. The commands
get a minimal environment (PATH, LANG, SLURM_CONF and the user's HOME, USER, LOGNAME, SHELL), so nothing of
the gateway's leaks into jobs.

Commands run in a small pool of threads with ``subprocess``, not with the event loop's own subprocess
support: uvloop (uvicorn's default loop) forks the whole gateway for each command, which costs milliseconds
of CPU per submission in a large process, while ``subprocess`` uses vfork. The pool also bounds how many
Slurm commands the gateway has in flight.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Literal

from slurm import environment
from slurm.client import Submission, until_kept
from slurm.dialects import Dialect, for_version
from slurm.dialects.parsable import ASSOCIATION_FIELDS
from slurm.errors import JobNotFound, SlurmError, SlurmUnavailable, classify
from slurm.records import AccountingRecord, Association, Job, Node, Partition
from slurm.tres import format_tres

RunAs = Literal["setpriv", "runuser", "sudo"]
SBATCH_OPTIONS = frozenset(
    {
        "job-name",
        "nodes",
        "ntasks",
        "ntasks-per-node",
        "cpus-per-task",
        "gres",
        "gpus",
        "gpus-per-node",
        "mem",
        "mem-per-cpu",
        "time",
        "partition",
        "qos",
        "array",
        "dependency",
        "output",
        "error",
        "export",
        "hold",
        "comment",
        "container",
        "exclusive",
    }
)
"""What a submission may set; anything else (``--uid``, ``--get-user-env``, ...) is refused."""
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def command_env(slurm_conf: str | None) -> dict[str, str]:
    """The whole environment a Slurm command starts with (plus the user's :func:`login_env` where it runs as one)."""
    env = {"PATH": _BASE_PATH, "LANG": "C.UTF-8"}
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    return env


def posix_user(user: str, *, command: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise SlurmError(f"no POSIX user {user!r} on this host", command=command) from None


def login_env(entry: pwd.struct_passwd) -> dict[str, str]:
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name, "SHELL": entry.pw_shell or "/bin/sh"}


class CliSlurmClient:
    def __init__(
        self,
        *,
        slurm_conf: str | None = None,
        run_as: RunAs = "setpriv",
        timeout: float = 60.0,
        version: str = "22.05",
        max_commands: int = 32,
    ) -> None:
        self.slurm_conf = slurm_conf
        self.run_as = run_as
        self.timeout = timeout
        self.dialect: Dialect = for_version(version)
        self._pool = ThreadPoolExecutor(max_workers=max_commands, thread_name_prefix="slurm-command")
        self._sbatch: str | None = None

    # --- plumbing ------------------------------------------------------------------------------------

    def _sbatch_path(self) -> str:
        """sbatch's absolute path: it is exec'd in the submitter's environment, whose PATH is theirs."""
        if self._sbatch is None:
            self._sbatch = shutil.which("sbatch", path=_BASE_PATH) or "/usr/bin/sbatch"
        return self._sbatch

    def _env(self) -> dict[str, str]:
        return command_env(self.slurm_conf)

    def _as_user(self, user: str, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """The command line that runs ``argv`` as ``user``, and the user's login variables for its environment."""
        entry = posix_user(user, command=argv[0])
        env = login_env(entry)
        if self.run_as == "sudo":
            return ["sudo", "-n", "-u", user, "--", *argv], env
        if self.run_as == "runuser":
            return ["runuser", "-u", user, "--", *argv], env
        ids = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]
        return ["setpriv", *ids, "--", *argv], env

    async def _run(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        stdin: bytes | None = None,
        cwd: str | None = None,
        submit: bool = False,
        label: str | None = None,
        answer: Literal["stdout", "stderr"] = "stdout",
    ) -> str:
        """Run a Slurm command (as ``user`` when given) and return its stdout; failures become SlurmErrors.

        ``label`` names the command in errors where ``argv[0]`` is a wrapper (the environment's reader)."""
        name = label or argv[0]
        env = self._env()
        command = list(argv)
        if user is not None:
            command, login = self._as_user(user, argv)
            env.update(login)

        def run() -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(  # noqa: S603 - an argv list, no shell; user values are single arguments
                command,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                env=env,
                cwd=cwd,
                timeout=self.timeout,
                check=False,
            )

        try:
            done = await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except subprocess.TimeoutExpired as exc:
            raise SlurmUnavailable(f"{name} did not answer within {self.timeout:.0f} s", command=name) from exc
        except OSError as exc:
            raise SlurmError(f"cannot run {command[0]}: {exc.strerror}", command=name) from exc
        out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        if done.returncode != 0:
            raise classify(err or out, command=name, submit=submit)
        return err.strip() if answer == "stderr" else out

    async def command(self, argv: Sequence[str]) -> str:
        """Run one of Slurm's commands as the gateway (not as a user); its stdout. Failures are SlurmErrors."""
        return await self._run(argv)

    async def _sacctmgr(self, *args: str, tolerate: Sequence[str] = ()) -> str:
        """sacctmgr exits 1 for 'Nothing new added' / 'Nothing deleted': idempotent calls tolerate those."""
        try:
            return await self._run(["sacctmgr", "-i", *args])
        except SlurmError as exc:
            if any(t in exc.message for t in tolerate):
                return exc.message
            raise

    # --- jobs ----------------------------------------------------------------------------------------

    def _sbatch_command(self, submission: Submission, *flags: str) -> tuple[list[str], bytes, str]:
        """sbatch's argv, stdin and directory for a submission (in the submitter's environment if it has one)."""
        unknown = sorted(set(submission.options) - SBATCH_OPTIONS)
        if unknown:
            raise ValueError(f"sbatch options not allowed: {', '.join(unknown)}")
        argv = ["sbatch", *flags, f"--account={submission.account}", f"--chdir={submission.work_dir}"]
        for name, value in submission.options.items():
            argv.append(f"--{name}" if value is None else f"--{name}={value}")
        stdin = submission.script.encode()
        if submission.environment is not None or submission.secrets:
            # sbatch runs in the submitter's environment, read from stdin by bash as the user (slurm.environment);
            # secrets come the same way (never on a command line), over the minimal environment if none was sent
            base = submission.environment
            if base is None:
                base = {**self._env(), **login_env(posix_user(submission.user, command="sbatch"))}
            forced = {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}
            stdin = environment.block(base, {**forced, **submission.secrets}) + stdin
            argv = ["/bin/bash", "-c", environment.READER, self._sbatch_path(), *argv[1:]]
        return argv, stdin, environment.submit_dir(submission.environment)

    async def submit(self, submission: Submission) -> int:
        argv, stdin, cwd = self._sbatch_command(submission, "--parsable")
        out = await self._run(argv, user=submission.user, stdin=stdin, cwd=cwd, submit=True, label="sbatch")
        # --parsable prints "jobid" or "jobid;cluster"
        return int(out.strip().split(";", 1)[0])

    async def test_only(self, submission: Submission) -> str:
        """``sbatch --test-only`` as the user: Slurm's answer (when and where it would start); nothing is made."""
        argv, stdin, cwd = self._sbatch_command(submission, "--test-only")
        return await self._run(
            argv, user=submission.user, stdin=stdin, cwd=cwd, submit=True, label="sbatch", answer="stderr"
        )

    async def cancel(self, job_id: int, *, user: str) -> None:
        await self._run(["scancel", str(job_id)], user=user)

    async def hold(self, job_id: int, *, user: str) -> None:
        await self._run(["scontrol", "hold", str(job_id)], user=user)

    async def release(self, job_id: int, *, user: str) -> None:
        await self._run(["scontrol", "release", str(job_id)], user=user)

    async def jobs(self) -> list[Job]:
        return self.dialect.parse_squeue(await self._run(["squeue", "--all", "--json"]))

    async def job(self, job_id: int) -> list[Job]:
        # scontrol, not squeue: 22.05's squeue --json ignores --jobs and would print every job of the cluster
        try:
            out = await self._run(["scontrol", "show", "job", str(job_id), "--oneline"])
        except JobNotFound:
            return []
        return self.dialect.parse_jobs_text(out)

    async def nodes(self) -> list[Node]:
        return self.dialect.parse_nodes(await self._run(["sinfo", "--json"]))

    async def partitions(self) -> list[Partition]:
        return self.dialect.parse_partitions_text(await self._run(["scontrol", "show", "partition", "--oneline"]))

    async def update_node(self, name: str, *, state: str, reason: str | None = None) -> None:
        argv = node_update_argv(name, state, reason)
        await self._run(argv)

    async def cluster_name(self) -> str | None:
        out = await self._run(["scontrol", "show", "config"])
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ClusterName":
                return value.strip() or None
        return None

    async def accounting(self, since: datetime, accounts: Sequence[str] | None = None) -> list[AccountingRecord]:
        if accounts is not None and not accounts:
            return []
        start = since.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
        only = ["-A", ",".join(accounts)] if accounts else []
        out = await self._run(["sacct", "--allusers", "--json", *only, "-S", start, "-E", "now"])
        return self.dialect.parse_sacct(out)

    # --- accounts and associations -------------------------------------------------------------------

    async def ensure_account(self, account: str, *, description: str = "") -> None:
        async def add() -> None:
            await self._sacctmgr(
                "add",
                "account",
                account,
                f"Description={description or account}",
                f"Organization={account}",
                tolerate=("Nothing new added",),
            )

        async def kept() -> bool:  # slurmdbd may lose an account added beside others, as it loses associations
            return any(a.user is None and a.partition is None for a in await self.associations(account))

        await until_kept(add, kept, f"the account {account!r}")

    async def ensure_association(self, user: str, account: str) -> None:
        async def add() -> None:
            await self._sacctmgr("add", "user", user, f"Account={account}", tolerate=("Nothing new added",))

        async def kept() -> bool:
            return any(a.user == user and a.partition is None for a in await self.associations(account))

        await until_kept(add, kept, f"the association of {user!r} with {account!r}")

    async def set_account_limits(self, account: str, grp_tres: Mapping[str, int | None]) -> None:
        if grp_tres:
            await self._sacctmgr(
                "modify",
                "account",
                account,
                "set",
                f"GrpTRES={format_tres(dict(grp_tres))}",
                tolerate=("Nothing modified",),
            )

    async def remove_association(self, user: str, account: str) -> None:
        await self._sacctmgr("remove", "user", user, f"Account={account}", tolerate=("Nothing deleted",))

    async def remove_account(self, account: str) -> None:
        await self._sacctmgr("remove", "account", account, tolerate=("Nothing deleted",))

    async def associations(self, account: str | None = None) -> list[Association]:
        args = ["-n", "-P", "show", "assoc", "format=" + ",".join(ASSOCIATION_FIELDS)]
        if account:
            args.append(f"account={account}")
        return self.dialect.parse_associations(await self._run(["sacctmgr", *args]), fields=ASSOCIATION_FIELDS)

    async def close(self) -> None:
        """Nothing to let go of: every call is its own process."""


NODE_STATES = frozenset({"drain", "resume", "undrain"})
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_REASON_BAD = re.compile(r"[\x00-\x1f\x7f\"']")


def node_update_argv(name: str, state: str, reason: str | None) -> list[str]:
    """scontrol's argv for a node's new state; one argument each (no shell), checked so that no value can be
    read by scontrol as another keyword (a name with ``=`` or a space, a reason with quotes)."""
    if not _NODE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a node name")
    if state not in NODE_STATES:
        raise ValueError(f"state {state!r} is not one of {sorted(NODE_STATES)}")
    if state == "drain" and not reason:
        raise ValueError("draining a node needs a reason")
    if reason is not None and (not reason.strip() or len(reason) > 200 or _REASON_BAD.search(reason)):
        raise ValueError("a reason is 1-200 printable characters without quotes")
    return ["scontrol", "update", f"nodename={name}", f"state={state}", *([f"reason={reason}"] if reason else [])]


def default_client() -> CliSlurmClient:
    return CliSlurmClient(slurm_conf=os.environ.get("SLURM_CONF"))
