"""A script that works with sbatch works with ``remotegpu submit`` and makes the same Slurm job.

The corpus (``corpus/*.sbatch``, one real-world script a file, each saying where it came from and what was
adapted) is submitted twice, held, by a throw-away POSIX user from the same directory and the same environment:
once with raw ``sbatch``, once with the real CLI, ``remotegpu submit``, run as that user against a real
``remotegpu serve`` (one per Slurm backend: ``cli`` and ``rest``). ``scontrol show job`` must agree on every
field the submission determines (all of them but :data:`NOT_COMPARED`; times to within a few seconds). For the
scripts marked ``# parity: env``, a second test submits their directives with a body that writes ``env`` to a
file (``-t 2`` added), releases both jobs and compares what each saw (all variables but
:data:`ENV_NOT_COMPARED`); ``SHLVL``, ``PWD``, ``SLURM_SUBMIT_DIR`` and the rest are compared on purpose.

A corpus file may carry, in its leading comments, ``# sbatch-args: ARGS`` (command-line options given to both
submissions before the script, as the source ran it) and ``@DEPENDENCY@`` (replaced by the id of a held job
submitted first, for scripts that depend on one).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import httpx
import msgspec
import pytest

from tests import cli_runner
from tests.integration.slurm.conftest import Cluster, Gateway, PosixUserFactory, home_of

REPO = Path(__file__).resolve().parents[3]
CORPUS_DIR = Path(__file__).with_name("corpus")
SCRIPTS = {path.stem: path.read_text() for path in sorted(CORPUS_DIR.glob("*.sbatch"))}

# Shapes the SlurmClient contract test (test_client_contract.py) submits through both backends.
CORPUS = {
    name: SCRIPTS[name]
    for name in (
        "covid-predict-train",
        "pytorch-ddp-tutorial-multinode",
        "amarel-array-throttled",
        "mlm-cluster-test-cpu",
    )
}

NOT_COMPARED = {
    "JobId": "the job's own id",
    "ArrayJobId": "the job's own id",
    "Command": "raw sbatch names the user's file; the gateway submits the script it rendered around it",
    "SubmitTime": "when it was submitted",
    "AccrueTime": "when it was submitted",
    "LastSchedEval": "when the scheduler last looked",
    "RunTime": "not started",
    "AllocNode:Sid": "the submitting process: sbatch's, or the gateway's sbatch / slurmrestd",
    "NodeList": "not allocated (held)",
    "BatchHost": "not allocated (held)",
    "SuspendTime": "not started",
    "SecsPreSuspend": "not started",
}
TIMES = ("EligibleTime", "StartTime", "EndTime", "Deadline", "PreemptEligibleTime")
"""Compared to within a few seconds: ``--begin=now+1hour`` resolves at each submission's own second."""
TIME_SLACK_SECONDS = 10

ENV_NOT_COMPARED = re.compile(
    r"^(SLURM_JOB_ID|SLURM_JOBID|SLURM_ARRAY_JOB_ID|SLURM_TASK_PID|SLURM_JOB_START_TIME|SLURM_JOB_END_TIME"
    r"|SLURMD_NODENAME|SLURM_NODELIST|SLURM_JOB_NODELIST|SLURM_TOPOLOGY_ADDR|SLURM_JOB_GPUS|SLURM_STEP_GPUS"
    r"|CUDA_VISIBLE_DEVICES|GPU_DEVICE_ORDINAL|ROCR_VISIBLE_DEVICES|ZE_AFFINITY_MASK|SLURM_GPUS_ON_NODE_IDS"
    r"|HOSTNAME|GEMINI_\w+|REMOTEGPU_USER_SCRIPT|_|OLDPWD)$"
)
"""Per-job identity and placement (which job, node and GPUs it got); the gateway's documented /gemini layout."""

USER_ENV_MARKER = "PARITY_FROM_SUBMITTER"

REST_REFUSES = {"--signal=B:": "slurmrestd 22.05 cannot signal the batch shell alone (B:); use the CLI backend"}
"""What the REST backend refuses by name and why (slurmrestd 22.05 has no field for it); the CLI backend takes it."""
REST_ENV_DIFFERS = re.compile(r"^(SLURM_CPUS_PER_GPU|SLURM_NTASKS|SLURM_NPROCS)$")
"""Set by sbatch from its options, and by slurmrestd 22.05 from the job description's fields: it leaves out
``SLURM_CPUS_PER_GPU`` and adds the task count the gateway has to send (else it makes a 1-CPU job of ``-N 2``)."""


# --- the corpus -------------------------------------------------------------------------------------------


def header(text: str) -> list[str]:
    """The leading comment block (where sbatch reads directives and the corpus keeps its notes)."""
    lines = []
    for line in text.splitlines()[1:] if text.startswith("#!") else text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return lines


def extra_args(text: str) -> list[str]:
    for line in header(text):
        if line.startswith("# sbatch-args:"):
            return shlex.split(line.removeprefix("# sbatch-args:"))
    return []


def runs_env_check(text: str) -> bool:
    return "# parity: env" in header(text)


def env_probe(text: str, out_dir: str) -> str:
    """The script with its body replaced by one that writes ``env`` (NUL-separated) and ends."""
    lines = text.splitlines()
    keep = 1 + len(header(text)) if text.startswith("#!") else len(header(text))
    probe = f'env -0 > {shlex.quote(out_dir)}/"$SLURM_JOB_ID.env"\nexit 0\n'
    return "\n".join(lines[:keep]) + "\n" + probe


def test_corpus_is_large_varied_and_sourced() -> None:
    assert len(SCRIPTS) >= 40, len(SCRIPTS)
    for name, text in SCRIPTS.items():
        notes = header(text)
        assert any(line.startswith("# source: ") for line in notes), f"{name}: no '# source:' line"
        assert any(line.startswith("# adapted: ") for line in notes), f"{name}: no '# adapted:' line"
    everything = "\n".join(SCRIPTS.values())
    for option in (
        "--gres=gpu:",
        "--gpus=",
        "--gpus-per-node",
        "--gpus-per-task",
        "--mem-per-gpu",
        "--cpus-per-gpu",
        "--exclusive",
        "--mail-type",
        "--signal",
        "--requeue",
        "--open-mode",
        "--time-min",
        "--begin",
        "--nice",
        "--comment",
        "--array",
        "--dependency",
        "--export",
        "--chdir",
        "--ntasks-per-gpu",
        "--gpu-bind",
        "--distribution",
        "--exclude",
        "--wckey",
    ):
        assert option in everything, f"no corpus script uses {option}"
    assert sum(runs_env_check(t) for t in SCRIPTS.values()) >= 5


# --- the two ways ------------------------------------------------------------------------------------------


class Submitter(msgspec.Struct, frozen=True):
    """One POSIX user of a workspace on a running gateway, and the environment both submissions share."""

    cluster: Cluster
    gateway: Gateway
    backend: str
    user: str
    account: str
    venv: Path

    @property
    def home(self) -> str:
        return home_of(self.user)

    @property
    def env(self) -> dict[str, str]:
        """What a login shell would have: the same for sbatch and for remotegpu."""
        return {
            "HOME": self.home,
            "PWD": self.home,  # every shell sets it; sbatch and remotegpu run from there
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": "/bin/bash",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "SLURM_CONF": self.cluster.conf,
            USER_ENV_MARKER: f"{self.user} was here",
        }

    def run(self, *argv: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = [f"{k}={v}" for k, v in {**self.env, **(extra_env or {})}.items()]
        return subprocess.run(
            ["runuser", "-u", self.user, "--", "env", "-i", *env, *argv],
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def sbatch(self, *argv: str) -> int:
        out = self.run("sbatch", "--parsable", *argv)
        assert out.returncode == 0, f"raw sbatch refused it (a corpus defect): {out.stderr.strip()}"
        return int(out.stdout.strip().split(";")[0])

    def remotegpu_submit(self, *argv: str) -> int:
        out = self.run(str(self.venv / "bin" / "remotegpu"), "submit", *argv)
        assert out.returncode == 0, f"remotegpu submit ({self.backend}) refused it: {out.stderr.strip()}"
        found = re.search(r"Slurm job (\d+)", out.stdout) or re.fullmatch(r"(\d+)(;\S+)?\n?", out.stdout)
        assert found, out.stdout
        return int(found[1])


def _start_gateway(cluster: Cluster, backend: str, database_url: str, logs: Path) -> Gateway:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(
        REMOTEGPU_DATABASE_URL=database_url,
        REMOTEGPU_SLURM_CONF=cluster.conf,
        REMOTEGPU_SLURM_BACKEND=backend,
        REMOTEGPU_SLURMRESTD_URL=cluster.rest_url,
        REMOTEGPU_SLURM_JWT_KEY=str(cluster.jwt_key),
        REMOTEGPU_LOG_LEVEL="WARNING",
        XDG_CONFIG_HOME=str(logs / "config"),
    )
    return Gateway(env, logs).start()


@pytest.fixture(scope="module", params=["cli", "rest"])
def submitter(
    request: pytest.FixtureRequest,
    slurm_cluster: Cluster,
    posix_user: PosixUserFactory,
    make_database_url: Callable[[str], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Submitter]:
    """A gateway on the ``cli`` or ``rest`` backend, a workspace on a fresh Slurm account, a logged-in member."""
    backend: str = request.param
    logs = tmp_path_factory.mktemp(f"parity-{backend}")
    gateway = _start_gateway(slurm_cluster, backend, make_database_url("sqlite"), logs)
    account = f"p{uuid.uuid4().hex[:10]}"
    user = posix_user()
    try:
        root = gateway.token("root", admin=True)
        gateway.token(user)
        slurm_cluster.add_member(user, account)
        r = httpx.post(
            gateway.url + "/api/v1/workspaces",
            headers={"Authorization": f"Bearer {root}"},
            json={"slug": "parity", "name": "Parity", "owner": user, "slurm_account": account},
        )
        assert r.status_code == 201, r.text
        venv = cli_runner.user_venv()
        sub = Submitter(cluster=slurm_cluster, gateway=gateway, backend=backend, user=user, account=account, venv=venv)
        login = sub.run(
            str(venv / "bin" / "remotegpu"),
            "login",
            "--url",
            gateway.url,
            "--username",
            user,
            "--workspace",
            "parity",
            extra_env={"REMOTEGPU_PASSWORD": f"{user}-password"},
        )
        assert login.returncode == 0, login.stderr
        yield sub
    finally:
        _remove_account(slurm_cluster, user, account)
        gateway.stop()


def _slurm_env(cluster: Cluster) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "SLURM_CONF": cluster.conf}


def _cancel(cluster: Cluster, job_id: int) -> None:
    """scancel, whatever the job's state (one that has ended already is no error here)."""
    subprocess.run(["scancel", str(job_id)], env=_slurm_env(cluster), check=False, capture_output=True)


def _remove_account(cluster: Cluster, user: str, account: str) -> None:
    """Cancel the user's jobs, wait until Slurm has let go of them, then remove the account.

    Removing an account whose jobs are still being cancelled crashed this slurmdbd 22.05 (a segfault in its
    connection from slurmctld, again at every restart while slurmctld replayed those jobs' records).
    """
    env = _slurm_env(cluster)
    subprocess.run(["scancel", "-u", user], env=env, check=False, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = subprocess.run(["squeue", "-h", "-u", user], env=env, capture_output=True, text=True, check=False)
        if left.returncode == 0 and not left.stdout.strip():
            break
        time.sleep(1)
    time.sleep(3)  # the jobs' end records reach slurmdbd
    subprocess.run(["sacctmgr", "-i", "remove", "account", account], env=env, check=False, capture_output=True)


# --- comparing ---------------------------------------------------------------------------------------------

_KEY = re.compile(r"(?:^|(?<= ))([A-Z][\w/:]*)=")


def show_job(cluster: Cluster, job_id: int) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (a value may hold blanks: a key is a capitalised word, "=", after a blank)."""
    line = cluster.run("scontrol", "show", "job", "-o", str(job_id)).splitlines()[0].rstrip()
    keys = list(_KEY.finditer(line))
    return {
        m[1]: line[m.end() : keys[i + 1].start() if i + 1 < len(keys) else len(line)].rstrip()
        for i, m in enumerate(keys)
    }


def _timestamp(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def comparable(shown: dict[str, str], job_id: int) -> dict[str, str]:
    """The fields the submission determines, with the job's own id (in paths) and our comment tag taken out."""
    out = {k: v for k, v in shown.items() if k not in NOT_COMPARED}
    user = shown.get("UserId", "").split("(")[0]
    for key in PATHS:
        if key in out:  # the user's name first: it may hold the digits of a job id (rgt1154c573, job 573)
            out[key] = out[key].replace(user, "USER") if user else out[key]
            out[key + JOB_ID] = str(job_id)  # which of its numbers are the job's id: see _same_path
    if "Comment" in out:  # the gateway keeps its own tag (rgpu:<instance>:<id>) beside the user's comment
        user_part = re.sub(r"rgpu:[0-9a-zA-Z]+:[0-9a-f]+[ ;,]*", "", out["Comment"]).strip(" ;,")
        if user_part:
            out["Comment"] = user_part
        else:
            del out["Comment"]
    return out


PATHS = ("StdOut", "StdErr", "StdIn")
JOB_ID = "#job-id"


def _with_ids_marked(path: str, job_id: str) -> set[str]:
    """``path`` with each choice of its occurrences of ``job_id`` (as a whole number) replaced by ``ID``: a
    number in a script's own file name (``R4Slurm-%A.out``) may equal a job id on a fresh cluster (job 4)."""
    spots = [m.span() for m in re.finditer(rf"(?<![0-9]){re.escape(job_id)}(?![0-9])", path)][:6]
    variants = set()
    for chosen in itertools.product((False, True), repeat=len(spots)):
        text, last = [], 0
        for (start, end), replace in zip(spots, chosen, strict=True):
            text += [path[last:start], "ID" if replace else path[start:end]]
            last = end
        variants.add("".join([*text, path[last:]]))
    return variants


def _same_path(a: str, a_id: str, b: str, b_id: str) -> bool:
    """Whether two jobs' paths are the same template expanded with each job's id."""
    return bool(_with_ids_marked(a, a_id) & _with_ids_marked(b, b_id))


def differences(raw: dict[str, str], ours: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    diff = {}
    for key in sorted(raw.keys() | ours.keys()):
        if key.endswith(JOB_ID):
            continue
        a, b = raw.get(key), ours.get(key)
        if a == b:
            continue
        if key in PATHS and a and b and _same_path(a, raw[key + JOB_ID], b, ours[key + JOB_ID]):
            continue
        if key in TIMES and a and b:
            ta, tb = _timestamp(a), _timestamp(b)
            if ta is not None and tb is not None and abs(ta - tb) <= TIME_SLACK_SECONDS:
                continue
        diff[key] = (a, b)
    return diff


def _write_as(user: str, path: Path, text: str) -> None:
    path.write_text(text)
    owner = pwd.getpwnam(user)
    os.chown(path, owner.pw_uid, owner.pw_gid)


@contextlib.contextmanager
def placeholder_dependency(sub: Submitter, text: str) -> Iterator[str]:
    """The script with ``@DEPENDENCY@`` replaced by a held job of the same user (cancelled afterwards)."""
    if "@DEPENDENCY@" not in text:
        yield text
        return
    job_id = sub.sbatch("-H", "-A", sub.account, "-J", "parity-upstream", "-o", "/dev/null", "--wrap", "true")
    try:
        yield text.replace("@DEPENDENCY@", str(job_id))
    finally:
        _cancel(sub.cluster, job_id)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_same_job_both_ways(name: str, submitter: Submitter) -> None:
    sub = submitter
    with placeholder_dependency(sub, SCRIPTS[name]) as text:
        script = Path(sub.home, f"{name}.sbatch")
        _write_as(sub.user, script, text)
        argv = ["-H", "-A", sub.account, *extra_args(text), script.name]
        # One after the other, each job gone before the next comes: the second must not see the first
        # (--dependency=singleton waits for a job of the same name and user).
        raw_id = sub.sbatch(*argv)
        try:
            raw = comparable(show_job(sub.cluster, raw_id), raw_id)
        finally:
            _cancel(sub.cluster, raw_id)
        refusal = next((why for option, why in REST_REFUSES.items() if option in text), None)
        if sub.backend == "rest" and refusal is not None:
            with pytest.raises(AssertionError, match=re.escape(refusal)):
                sub.remotegpu_submit(*argv)
            return
        ours_id = sub.remotegpu_submit(*argv)
        try:
            ours = comparable(show_job(sub.cluster, ours_id), ours_id)
        finally:
            _cancel(sub.cluster, ours_id)
    diff = differences(raw, ours)
    assert not diff, f"{name}: scontrol show job differs (field: (sbatch, remotegpu)): {diff}"


ENV_SCRIPTS = sorted(name for name, text in SCRIPTS.items() if runs_env_check(text))


def _read_env(path: Path) -> dict[str, str]:
    entries = [item.partition("=") for item in path.read_text().split("\0") if item]
    return {k: v for k, _, v in entries}


@pytest.mark.parametrize("name", ENV_SCRIPTS)
def test_same_environment_both_ways(name: str, submitter: Submitter) -> None:
    """Both jobs run (released) and print ``env``: the job sees what the submitter had, as under sbatch."""
    sub = submitter
    out_dir = Path(sub.home, f"env-{name}-{sub.backend}")
    out_dir.mkdir(exist_ok=True)
    os.chown(out_dir, pwd.getpwnam(sub.user).pw_uid, pwd.getpwnam(sub.user).pw_gid)
    script = Path(sub.home, f"{name}.env.sbatch")
    _write_as(sub.user, script, env_probe(SCRIPTS[name], str(out_dir)))
    argv = ["-H", "-A", sub.account, "-t", "2", *extra_args(SCRIPTS[name]), script.name]
    ids = [sub.sbatch(*argv)]
    try:
        ids.append(sub.remotegpu_submit(*argv))
        for job_id in ids:
            sub.cluster.run("scontrol", "release", str(job_id))
        files = [out_dir / f"{job_id}.env" for job_id in ids]
        deadline = time.monotonic() + 90
        while not all(f.exists() and f.stat().st_size for f in files):
            assert time.monotonic() < deadline, (
                f"jobs {ids} wrote no env within 90 s: {sorted(p.name for p in out_dir.iterdir())}"
            )
            time.sleep(0.5)
        time.sleep(0.5)  # the file is written in one go; let it close
    finally:
        for job_id in ids:
            _cancel(sub.cluster, job_id)
    raw, ours = (_read_env(f) for f in files)
    if "--export=NONE" not in SCRIPTS[name]:  # else sbatch passes only SLURM_* and what it sets itself
        assert raw.get(USER_ENV_MARKER) == sub.env[USER_ENV_MARKER], "raw sbatch did not export the submitter's env"

    def compared(name: str) -> bool:
        return not ENV_NOT_COMPARED.match(name) and not (sub.backend == "rest" and REST_ENV_DIFFERS.match(name))

    raw_cmp = {k: v for k, v in raw.items() if compared(k)}
    ours_cmp = {k: v for k, v in ours.items() if compared(k)}
    diff = {k: (raw_cmp.get(k), ours_cmp.get(k)) for k in sorted(raw_cmp.keys() | ours_cmp.keys())}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    assert not diff, f"{name}: job environment differs (variable: (sbatch, remotegpu)): {diff}"


if __name__ == "__main__":  # list the corpus: python -m tests.integration.slurm.test_sbatch_parity
    for stem, text in SCRIPTS.items():
        source = next((line for line in header(text) if line.startswith("# source: ")), "?")
        print(f"{stem:40} {source.removeprefix('# source: ')}", file=sys.stdout)
