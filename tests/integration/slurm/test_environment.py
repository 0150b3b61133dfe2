"""The submitter's environment in the job: raw sbatch vs the gateway's backends, on the real cluster."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from slurm.cli import CliSlurmClient
from slurm.client import SlurmClient, Submission
from slurm.records import JobState
from slurm.rest import RestSlurmClient
from tests.cli_runner import UserCli, user_env
from tests.conftest import UserFactory
from tests.integration.slurm.conftest import BOTH_BACKENDS, WS, Cluster, Gateway, PosixUserFactory, home_of, make_team
from tests.integration.slurm.test_client_contract import _member, _wait_for

pytestmark = pytest.mark.integration

_NODE_OR_JOB = re.compile(
    r"^(SLURM_JOB_?ID|SLURM_TASK_PID|SLURMD_NODENAME|HOSTNAME|SLURM_TOPOLOGY_ADDR|SLURM_(JOB_)?NODELIST)="
)
"""What differs between any two jobs (their ids, where they ran)."""
SCRIPT = "#!/bin/bash\nenv -0 | sort -z | tr '\\0' '\\036'\n"
TRICKY = 'it\'s "quoted" $(touch /tmp/rgpu-pwned) `id`; a=b\nsecond line'


def _submitter_env(user: str, home: str) -> dict[str, str]:
    """A login shell's environment, with a few variables of the user's and a few that must not cross."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "PWD": home,
        "SHLVL": "1",
        "_": shutil.which("sbatch") or "/usr/bin/sbatch",
        "RGPU_TRICKY": TRICKY,
        "FOO": "from-the-shell",
        "LD_LIBRARY_PATH": "/opt/cuda/lib64",
    }


def _raw_sbatch(cluster: Cluster, user: str, account: str, env: dict[str, str], options: list[str]) -> int:
    """sbatch run by the user from ``env`` in their home directory, as at a login node's prompt."""
    entry = pwd.getpwnam(user)
    done = subprocess.run(
        [
            *("setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"),
            *(shutil.which("sbatch") or "sbatch", "--parsable", f"--account={account}", *options),
        ],
        input=SCRIPT,
        env={**env, "SLURM_CONF": cluster.conf},
        cwd=env["HOME"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip().split(";")[0])


async def _job_env(watcher: SlurmClient, job_id: int, home: str) -> dict[str, str]:
    job = await _wait_for(watcher, job_id, {JobState.COMPLETED, JobState.FAILED})
    assert job.state == JobState.COMPLETED, job
    text = await asyncio.to_thread(Path(home, f"env-{job_id}.out").read_text)
    entries = [e for e in text.split("\x1e") if e and not _NODE_OR_JOB.match(e)]
    return dict(e.split("=", 1) for e in entries)


# alone: a job pending for an association slurmctld dropped while other workers added and removed theirs
# (slurmdbd 22.05; seen once in CI as reason InvalidAccount) would compare nothing
@pytest.mark.serial
@pytest.mark.parametrize("export", [None, "NONE", "ALL,BAR=given", "FOO,BAR=given"])
async def test_the_job_gets_the_environment_raw_sbatch_gives_it(
    export: str | None,
    slurm_cluster: Cluster,
    cli_client: CliSlurmClient,
    rest_client: RestSlurmClient,
    posix_user: PosixUserFactory,
    slurm_account: str,
) -> None:
    user = await _member(cli_client, posix_user, slurm_account, slurm_cluster)
    home = home_of(user)
    env = _submitter_env(user, home)
    options = {"job-name": "env", "output": f"{home}/env-%j.out", "chdir": home}
    if export is not None:
        options["export"] = export
    raw_id = await asyncio.to_thread(
        _raw_sbatch, slurm_cluster, user, slurm_account, env, [f"--{k}={v}" for k, v in options.items()]
    )
    # what the gateway is sent holds more than a shell would give sbatch: none of it may reach the job
    sent = {**env, "REMOTEGPU_TOKEN": "secret", "LD_PRELOAD": "/nonexistent.so", "SBATCH_WAIT": "1"}
    submission = Submission(
        user=user,
        account=slurm_account,
        script=SCRIPT,
        work_dir=home,
        options={k: v for k, v in options.items() if k != "chdir"},
        environment=sent,
    )
    raw = await _job_env(cli_client, raw_id, home)
    for backend in (cli_client, rest_client):
        job_id = await backend.submit(submission)
        assert await _job_env(cli_client, job_id, home) == raw, type(backend).__name__
    assert not await asyncio.to_thread(Path("/tmp/rgpu-pwned").exists)
    if export is None or export.startswith("ALL"):
        assert raw["RGPU_TRICKY"] == TRICKY and raw["LD_LIBRARY_PATH"] == "/opt/cuda/lib64"
    else:
        assert "RGPU_TRICKY" not in raw
    if export == "NONE":
        assert "FOO" not in raw and all(k.startswith(("SLURM", "ENVIRONMENT")) or k in _MINIMAL for k in raw), raw
    if export is not None and "BAR=given" in export:
        assert raw["BAR"] == "given"
    if export == "FOO,BAR=given":
        assert raw["FOO"] == "from-the-shell" and "RGPU_TRICKY" not in raw


_MINIMAL = {"HOME", "USER", "LOGNAME", "SHELL", "PATH", "PWD", "SHLVL", "_", "TMPDIR", "LANG", "MAIL", "TERM"}
"""Besides SLURM_*, what a --export=NONE job may hold: what the node's login environment gives it."""


async def test_runuser_gives_sbatch_the_submitters_environment_too(
    slurm_cluster: Cluster, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    """runuser (with its PAM session) resets nothing the reader gives sbatch: it comes on stdin."""
    client = CliSlurmClient(slurm_conf=slurm_cluster.conf, run_as="runuser", timeout=30)
    user = await _member(client, posix_user, slurm_account, slurm_cluster)
    home = home_of(user)
    submission = Submission(
        user=user,
        account=slurm_account,
        script=SCRIPT,
        work_dir=home,
        options={"output": f"{home}/env-%j.out"},
        environment=_submitter_env(user, home),
    )
    env = await _job_env(client, await client.submit(submission), home)
    assert env["RGPU_TRICKY"] == TRICKY and env["SLURM_SUBMIT_DIR"] == home and env["SHLVL"] == "2"


# --- end to end: `remotegpu submit` as the user, against raw sbatch from the same shell -------------------------

ENV_SCRIPT = "#!/bin/bash\n#SBATCH --time=2\nenv -0 | sort -z | tr '\\0' '\\036' > \"$HOME/env-$SLURM_JOB_ID.out\"\n"
_GATEWAY_ONLY = re.compile(r"^(GEMINI_\w+)=")
"""What the gateway's script adds on purpose: the documented /gemini layout."""


def _login(gateway: Gateway, user: str, home: str, account: str) -> UserCli:
    root_token = gateway.token("root", admin=True)
    gateway.token(user)
    made = httpx.post(
        gateway.url + "/api/v1/workspaces",
        headers={"Authorization": f"Bearer {root_token}"},
        json={"slug": f"env-{account}", "name": "env", "owner": user, "slurm_account": account},
    )
    assert made.status_code == 201, made.text
    cli = UserCli(user, home)
    login = cli("login", "--url", gateway.url, "--username", user, extra_env={"REMOTEGPU_PASSWORD": f"{user}-password"})
    assert login.returncode == 0, login.stderr
    script = Path(home, "env.sh")
    script.write_text(ENV_SCRIPT)
    owner = pwd.getpwnam(user)
    os.chown(script, owner.pw_uid, owner.pw_gid)
    return cli


def _env_file(path: Path) -> dict[str, str]:
    for _ in range(120):
        if path.exists() and path.stat().st_size:
            break
        time.sleep(0.5)
    entries = path.read_text().split("\x1e")
    return dict(e.split("=", 1) for e in entries if e and not _NODE_OR_JOB.match(e) and not _GATEWAY_ONLY.match(e))


@pytest.mark.parametrize("export", [None, "NONE"])
def test_remotegpu_submit_gives_the_job_the_environment_sbatch_gives_it(
    export: str | None, gateway: Gateway, slurm_cluster: Cluster, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    user = posix_user()
    home = home_of(user)
    cli = _login(gateway, user, home, slurm_account)
    mine = {"RGPU_TRICKY": TRICKY, "SHLVL": "1", "PWD": home, "SLURM_CONF": slurm_cluster.conf}
    options = [f"--export={export}"] if export else []
    submitted = cli("submit", *options, "env.sh", cwd=home, extra_env=mine)
    assert submitted.returncode == 0, submitted.stderr
    slurm_id = re.search(r"Slurm job (\d+)", submitted.stdout)
    assert slurm_id, submitted.stdout
    raw = subprocess.run(  # then sbatch at the same prompt (the association exists now)
        [
            *("runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in user_env(home, mine).items())),
            *("sbatch", *options, f"--account={slurm_account}", "--parsable", "env.sh"),
        ],
        cwd=home,
        capture_output=True,
        text=True,
        check=False,
    )
    assert raw.returncode == 0, raw.stderr
    via_sbatch = _env_file(Path(home, f"env-{raw.stdout.strip().split(';')[0]}.out"))
    via_gateway = _env_file(Path(home, f"env-{slurm_id[1]}.out"))
    assert via_gateway == via_sbatch
    if export is None:
        assert via_gateway["RGPU_TRICKY"] == TRICKY
    else:
        assert "RGPU_TRICKY" not in via_gateway and via_gateway["SLURM_EXPORT_ENV"] == "NONE"
    assert not any(k.startswith("REMOTEGPU_") for k in via_gateway)  # the CLI's URL and token stayed home


# --- dependencies by gateway id ------------------------------------------------------------------------------


async def test_dependencies_take_gateway_ids_of_the_workspaces_jobs(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    slurm_cluster: Cluster,
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    first = await api.post(
        f"{WS}/lab/jobs", json={"name": "first", "command": ["sleep", "300"], "hold": True}, headers=team["alice"]
    )
    assert first.status_code == 201, first.text
    gateway_id, slurm_id = first.json()["id"], first.json()["slurm_job_id"]
    second = await api.post(
        f"{WS}/lab/jobs",
        json={"name": "second", "command": ["true"], "hold": True, "dependency": f"afterok:{gateway_id}:{slurm_id}"},
        headers=team["alice"],
    )
    assert second.status_code == 201, second.text
    shown = await asyncio.to_thread(
        subprocess.run,
        ["scontrol", "show", "job", str(second.json()["slurm_job_id"])],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "SLURM_CONF": slurm_cluster.conf},
    )
    dependency = next(w for w in shown.stdout.split() if w.startswith("Dependency="))
    assert dependency.startswith(f"Dependency=afterok:{slurm_id}") and gateway_id not in dependency, dependency
    unknown = await api.post(
        f"{WS}/lab/jobs",
        json={"name": "third", "command": ["true"], "dependency": f"afterany:{'0' * 32}"},
        headers=team["alice"],
    )
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["field"] == "dependency", unknown.text
    for job in (first, second):
        await api.post(f"{WS}/lab/jobs/{job.json()['id']}/cancel", headers=team["alice"])


# --- sbatch --test-only ------------------------------------------------------------------------------------------


@BOTH_BACKENDS
async def test_test_only_gives_slurms_answer_and_submits_nothing(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    posix_user: PosixUserFactory,
    slurm_account: str,
    slurm_cluster: Cluster,
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    body = {"name": "probe", "command": ["true"], "gpus_per_node": 1, "gpu_type": "a100"}
    answer = await api.post(f"{WS}/lab/jobs/test", json=body, headers=team["alice"])
    assert answer.status_code == 200, answer.text
    assert re.fullmatch(
        r"sbatch: Job \d+ to start at \S+ using \d+ processors on nodes \S+ in partition \S+", answer.json()["message"]
    ), answer.text
    listed = await api.get(f"{WS}/lab/jobs", headers=team["alice"])
    assert listed.json()["items"] == []
    queued = await asyncio.to_thread(
        subprocess.run,
        ["squeue", "-h", "-A", slurm_account],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "SLURM_CONF": slurm_cluster.conf},
    )
    assert queued.stdout == ""
    refused = await api.post(f"{WS}/lab/jobs/test", json={**body, "partition": "nope"}, headers=team["alice"])
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "partition", refused.text
