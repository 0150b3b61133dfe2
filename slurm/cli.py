"""The CLI backend: Slurm's own commands, run as the user where the work is the user's.

Jobs are submitted with ``runuser -u USER -- sbatch`` (``sudo -n -u`` where configured), never as the
gateway's account. The commands get a minimal environment, so nothing of the gateway's leaks into jobs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from slurm.client import Submission
from slurm.dialects import Dialect, for_version
from slurm.dialects.parsable import ASSOCIATION_FIELDS
from slurm.errors import SlurmError, SlurmUnavailable, classify
from slurm.records import AccountingRecord, Association, Job
from slurm.tres import format_tres

RunAs = Literal["runuser", "sudo"]
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


class CliSlurmClient:
    def __init__(
        self,
        *,
        slurm_conf: str | None = None,
        run_as: RunAs = "runuser",
        timeout: float = 60.0,
        version: str = "22.05",
    ) -> None:
        self.slurm_conf = slurm_conf
        self.run_as = run_as
        self.timeout = timeout
        self.dialect: Dialect = for_version(version)

    # --- plumbing ------------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {"PATH": _BASE_PATH, "LANG": "C.UTF-8"}
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return env

    def _as_user(self, user: str, argv: Sequence[str]) -> list[str]:
        if self.run_as == "sudo":
            return ["sudo", "-n", "-u", user, "--", *argv]
        return ["runuser", "-u", user, "--", *argv]

    async def _run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, cwd: str | None = None, submit: bool = False
    ) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(),
                cwd=cwd,
            )
        except OSError as exc:
            raise SlurmError(f"cannot run {argv[0]}: {exc.strerror}", command=argv[0]) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise SlurmUnavailable(f"{argv[0]} did not answer within {self.timeout:.0f} s", command=argv[0]) from exc
        if proc.returncode != 0:
            raise classify(err.decode(errors="replace") or out.decode(errors="replace"), command=argv[0], submit=submit)
        return out.decode(errors="replace")

    async def _sacctmgr(self, *args: str, tolerate: Sequence[str] = ()) -> str:
        """sacctmgr exits 1 for 'Nothing new added' / 'Nothing deleted': idempotent calls tolerate those."""
        try:
            return await self._run(["sacctmgr", "-i", *args])
        except SlurmError as exc:
            if any(t in exc.message for t in tolerate):
                return exc.message
            raise

    # --- jobs ----------------------------------------------------------------------------------------

    async def submit(self, submission: Submission) -> int:
        unknown = sorted(set(submission.options) - SBATCH_OPTIONS)
        if unknown:
            raise ValueError(f"sbatch options not allowed: {', '.join(unknown)}")
        argv = ["sbatch", "--parsable", f"--account={submission.account}", f"--chdir={submission.work_dir}"]
        for name, value in submission.options.items():
            argv.append(f"--{name}" if value is None else f"--{name}={value}")
        out = await self._run(
            self._as_user(submission.user, argv), stdin=submission.script.encode(), cwd="/", submit=True
        )
        # --parsable prints "jobid" or "jobid;cluster"
        return int(out.strip().split(";", 1)[0])

    async def cancel(self, job_id: int, *, user: str) -> None:
        await self._run(self._as_user(user, ["scancel", str(job_id)]))

    async def hold(self, job_id: int, *, user: str) -> None:
        await self._run(self._as_user(user, ["scontrol", "hold", str(job_id)]))

    async def release(self, job_id: int, *, user: str) -> None:
        await self._run(self._as_user(user, ["scontrol", "release", str(job_id)]))

    async def jobs(self) -> list[Job]:
        return self.dialect.parse_squeue(await self._run(["squeue", "--all", "--json"]))

    async def accounting(self, since: datetime) -> list[AccountingRecord]:
        start = since.astimezone().strftime("%Y-%m-%dT%H:%M:%S")
        out = await self._run(["sacct", "--allusers", "--json", "-S", start, "-E", "now"])
        return self.dialect.parse_sacct(out)

    # --- accounts and associations -------------------------------------------------------------------

    async def ensure_account(self, account: str, *, description: str = "") -> None:
        await self._sacctmgr(
            "add",
            "account",
            account,
            f"Description={description or account}",
            f"Organization={account}",
            tolerate=("Nothing new added",),
        )

    async def ensure_association(self, user: str, account: str) -> None:
        await self._sacctmgr("add", "user", user, f"Account={account}", tolerate=("Nothing new added",))

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


def default_client() -> CliSlurmClient:
    return CliSlurmClient(slurm_conf=os.environ.get("SLURM_CONF"))
