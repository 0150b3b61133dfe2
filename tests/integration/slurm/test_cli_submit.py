"""A researcher's path on the command line: login, submit an sbatch script, follow it, read its output.

Real processes throughout: ``remotegpu serve``, ``remotegpu worker --once``, the CLI, the Slurm cluster.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from pathlib import Path

import httpx

from tests.cli_runner import UserCli
from tests.integration.slurm.conftest import Cluster, Gateway, PosixUserFactory, home_of

SCRIPT = """#!/bin/bash
#SBATCH --job-name=cli-e2e
#SBATCH --gres=gpu:a100:1
#SBATCH --time=5
echo "hello $1 from $(id -un) gpu=$CUDA_VISIBLE_DEVICES"
"""


def test_login_submit_follow(
    gateway: Gateway, slurm_cluster: Cluster, posix_user: PosixUserFactory, slurm_account: str
) -> None:
    url = gateway.url
    user = posix_user()
    home = home_of(user)
    cli = UserCli(user, home)  # the user's own CLI, as that POSIX user (operator commands stay gateway.command)
    root_token = gateway.token("root", admin=True)
    gateway.token(user)
    r = httpx.post(
        url + "/api/v1/workspaces",
        headers={"Authorization": f"Bearer {root_token}"},
        json={"slug": "cli-lab", "name": "CLI", "owner": user, "slurm_account": slurm_account},
    )
    assert r.status_code == 201, r.text

    login = cli("login", "--url", url, "--username", user, extra_env={"REMOTEGPU_PASSWORD": f"{user}-password"})
    assert login.returncode == 0, login.stderr
    script = Path(home, "job.sh")
    script.write_text(SCRIPT)
    owner = pwd.getpwnam(user)
    os.chown(script, owner.pw_uid, owner.pw_gid)

    bad = cli("submit", "--uid=0", "--bb=x", "job.sh", cwd=home)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "--bb (no burst buffers here)" in bad.stderr and "--uid (jobs run as the submitting user)" in bad.stderr

    submitted = cli("submit", "-t", "3", "job.sh", "--world", cwd=home)  # the script's argument, not sbatch's
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"Submitted job ([0-9a-f]{32})", submitted.stdout)
    assert job_id, submitted.stdout

    for _ in range(60):
        assert gateway.command("worker", "--once").returncode == 0
        listed = cli("jobs").stdout
        if "COMPLETED" in listed:
            break
        time.sleep(0.5)
    assert job_id[1][:8] in listed and "COMPLETED" in listed and "cli-e2e" in listed
    logs = cli("logs", job_id[1])
    # the GPU Slurm gave it (no cgroup renumbering on this cluster: 0 or 1, whichever was free)
    assert re.fullmatch(rf"hello --world from {user} gpu=[01]", logs.stdout.strip()), logs.stderr

    wrong = cli("submit", "-A", "not-mine", "job.sh", cwd=home)
    assert wrong.returncode == 1 and "not-mine" in wrong.stderr, wrong.stderr
    by_account = cli("submit", "-A", slurm_account, "--hold", "job.sh", "again", cwd=home)
    assert by_account.returncode == 0, by_account.stderr
    held = re.search(r"Submitted job ([0-9a-f]{32})", by_account.stdout)
    assert held, by_account.stdout
    assert cli("cancel", held[1]).returncode == 0

    # options sites use daily reach Slurm through the API, and the user's comment follows ours
    daily = cli(
        "submit", "-H", "--gres=gpu:1", "-N", "1-2", "--mail-type=END,FAIL", f"--mail-user={user}@example.org",
        "--exclusive=user", "--no-requeue", "--nice=5", "--comment=mine", "-x", "n2", "job.sh", cwd=home,
    )  # fmt: skip
    assert daily.returncode == 0, daily.stderr
    slurm_id = re.search(r"Slurm job (\d+)", daily.stdout)
    assert slurm_id, daily.stdout
    shown = slurm_cluster.run("scontrol", "show", "job", "-o", slurm_id[1])
    fields = dict(re.findall(r"(\S+?)=(\S*)", shown))
    assert fields["TresPerNode"] == "gres:gpu:1" and fields["NumNodes"] == "1-2", shown
    assert (fields["MailType"], fields["OverSubscribe"]) == ("END,FAIL", "USER"), shown
    assert (fields["Requeue"], fields["Nice"]) == ("0", "5"), shown
    assert fields["ExcNodeList"] == "n2" and re.search(r" Comment=rgpu:\w+:[0-9a-f]{32} mine ", shown), shown
    slurm_cluster.run("scancel", slurm_id[1])
