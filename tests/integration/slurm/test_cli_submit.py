"""A researcher's path on the command line: login, submit an sbatch script, follow it, read its output.

Real processes throughout: ``remotegpu serve``, ``remotegpu worker --once``, the CLI, the Slurm cluster.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.slurm.conftest import Cluster, PosixUserFactory, home_of
from tests.integration.test_cli import _free_port

REMOTEGPU = [sys.executable, "-m", "gateway.cli"]
SCRIPT = """#!/bin/bash
#SBATCH --job-name=cli-e2e
#SBATCH --gres=gpu:a100:1
#SBATCH --time=5
echo "hello $1 from $(id -un) gpu=$CUDA_VISIBLE_DEVICES"
"""


@pytest.fixture
def stack(
    slurm_cluster: Cluster, make_database_url: Callable[[str], str], tmp_path: Path, slurm_account: str
) -> Iterator[tuple[str, dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(
        REMOTEGPU_DATABASE_URL=make_database_url("sqlite"),
        REMOTEGPU_SLURM_CONF=slurm_cluster.conf,
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([*REMOTEGPU, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url, env
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def cli(
    env: dict[str, str], *args: str, cwd: str | None = None, user_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*REMOTEGPU, *args],
        env={**env, **(user_env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_login_submit_follow(
    stack: tuple[str, dict[str, str]], posix_user: PosixUserFactory, slurm_account: str
) -> None:
    url, env = stack
    user = posix_user()
    home = home_of(user)
    assert (
        cli(env, "admin", "create-user", "root", "--admin", user_env={"REMOTEGPU_PASSWORD": "root-password"}).returncode
        == 0
    )
    assert cli(env, "admin", "create-user", user, user_env={"REMOTEGPU_PASSWORD": "user-password"}).returncode == 0
    root_token = cli(env, "token", "create", "root").stdout.strip()
    r = httpx.post(
        url + "/api/v1/workspaces",
        headers={"Authorization": f"Bearer {root_token}"},
        json={"slug": "cli-lab", "name": "CLI", "owner": user, "slurm_account": slurm_account},
    )
    assert r.status_code == 201, r.text

    login = cli(env, "login", "--url", url, "--username", user, user_env={"REMOTEGPU_PASSWORD": "user-password"})
    assert login.returncode == 0, login.stderr
    script = Path(home, "job.sh")
    script.write_text(SCRIPT)
    owner = pwd.getpwnam(user)
    os.chown(script, owner.pw_uid, owner.pw_gid)

    bad = cli(env, "submit", "--mail-type=ALL", "--exclusive", "job.sh", cwd=home)
    assert bad.returncode == 1 and "--exclusive" in bad.stderr and "--mail-type" in bad.stderr

    submitted = cli(env, "submit", "-t", "3", "job.sh", "world", cwd=home)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"Submitted job ([0-9a-f]{32})", submitted.stdout)
    assert job_id, submitted.stdout

    for _ in range(60):
        assert cli(env, "worker", "--once").returncode == 0
        listed = cli(env, "jobs").stdout
        if "COMPLETED" in listed:
            break
        time.sleep(0.5)
    assert job_id[1] in listed and "COMPLETED" in listed and "cli-e2e" in listed
    logs = cli(env, "logs", job_id[1])
    assert logs.stdout.strip() == f"hello world from {user} gpu=0", logs.stderr

    wrong = cli(env, "submit", "-A", "not-mine", "job.sh", cwd=home)
    assert wrong.returncode == 1 and "not-mine" in wrong.stderr, wrong.stderr
    by_account = cli(env, "submit", "-A", slurm_account, "--hold", "job.sh", "again", cwd=home)
    assert by_account.returncode == 0, by_account.stderr
    held = re.search(r"Submitted job ([0-9a-f]{32})", by_account.stdout)
    assert held, by_account.stdout
    assert cli(env, "cancel", held[1]).returncode == 0
