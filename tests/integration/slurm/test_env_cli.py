"""``remotegpu env`` and ``remotegpu ssh-key`` as a cluster user runs them: a non-root POSIX user's CLI against a
real ``remotegpu serve`` and worker on the real cluster, with keys made by ``ssh-keygen`` and OpenSSH's ``ssh``."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_runner import run_cli_as
from tests.integration.slurm.conftest import WS, Cluster, Gateway, PosixUserFactory, home_of

pytestmark = pytest.mark.integration


class User:
    """A POSIX user logged in with the CLI, owner of workspace ``lab`` (on the test's Slurm account)."""

    def __init__(self, gateway: Gateway, name: str, admin: dict[str, str]) -> None:
        self.gateway, self.name, self.home = gateway, name, home_of(name)
        self.admin = admin
        """A platform admin's headers, for what the user cannot do (quotas)."""

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_cli_as(self.name, *args, home=self.home, env={"REMOTEGPU_WORKSPACE": "lab"}, timeout=timeout)

    def ok(self, *args: str, timeout: float = 120) -> str:
        done = self(*args, timeout=timeout)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def keygen(self, name: str, *options: str) -> Path:
        """A key pair the user makes in their ~/.ssh, as they would."""
        key = Path(self.home, ".ssh", name)
        if not key.parent.exists():
            entry = pwd.getpwnam(self.name)
            key.parent.mkdir(mode=0o700)
            os.chown(key.parent, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            ["runuser", "-u", self.name, "--", "ssh-keygen", "-q", "-N", "", *options, "-f", str(key)],
            check=True,
            capture_output=True,
            cwd=self.home,
        )
        return key


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 1 and one line of error, with every needle, on stderr (after ``--wait``'s progress lines)."""
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def user(gateway: Gateway, posix_user: PosixUserFactory, slurm_account: str) -> Iterator[User]:
    name = posix_user()
    root = {"Authorization": f"Bearer {gateway.token('rgadmin', admin=True)}"}
    gateway.token(name)
    made = httpx.post(
        gateway.url + WS,
        headers=root,
        json={"slug": "lab", "name": "Lab", "owner": name, "slurm_account": slurm_account},
    )
    assert made.status_code == 201, made.text
    cli = User(gateway, name, root)
    login = run_cli_as(
        name, "login", "--url", gateway.url, "--username", name, home=cli.home,
        env={"REMOTEGPU_PASSWORD": f"{name}-password"},
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    yield cli
    for env in json.loads(cli.ok("env", "list", "--json")):  # nothing left for the account's removal to trip over
        cli("env", "delete", env["id"])


def fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_ssh_keys_from_ssh_keygen(user: User) -> None:
    ed25519 = user.keygen("id_ed25519", "-t", "ed25519", "-C", "me@laptop")
    one_line_error(user("ssh-key", "add", str(ed25519)), "private key", f"give {ed25519}.pub")
    added = user.ok("ssh-key", "add", f"{ed25519}.pub")
    first = re.search(r"added key (\d+) 'me@laptop': ssh-ed25519 256 (SHA256:\S+)", added)
    assert first and first[2] == fingerprint(ed25519.with_suffix(".pub")), added
    one_line_error(user("ssh-key", "add", f"{ed25519}.pub"), "already")  # once per user

    rsa = user.keygen("id_rsa", "-t", "rsa", "-b", "4096")
    named = user.ok("ssh-key", "add", f"{rsa}.pub", "--name", "work")
    second = re.search(r"added key (\d+) 'work': ssh-rsa 4096 (SHA256:\S+)", named)
    assert second, named
    small = user.keygen("id_small", "-t", "rsa", "-b", "2048")
    one_line_error(user("ssh-key", "add", f"{small}.pub"), "3072")

    lines = user.ok("ssh-key", "list").splitlines()
    assert lines[0].split() == ["ID", "NAME", "TYPE", "BITS", "FINGERPRINT", "ADDED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[first[1]][1:5] == ["me@laptop", "ssh-ed25519", "256", first[2]]
    assert rows[second[1]][1:5] == ["work", "ssh-rsa", "4096", second[2]]
    listed = json.loads(user.ok("ssh-key", "list", "--json"))
    assert {k["fingerprint"] for k in listed} == {first[2], second[2]}

    assert user.ok("ssh-key", "delete", first[1]).strip() == f"deleted key {first[1]}"
    one_line_error(user("ssh-key", "delete", first[1]))
    assert [k["name"] for k in json.loads(user.ok("ssh-key", "list", "--json"))] == ["work"]


def _session(user: User, ref: str) -> dict[str, object]:
    shown = json.loads(user.ok("env", "show", ref, "--json"))
    return dict(shown["session"] or {})


def squeue_ids(cluster: Cluster) -> set[int]:
    out = cluster.run("squeue", "-h", "-o", "%i", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING")
    return {int(line) for line in out.split()}


def test_create_wait_ssh_stop_start_restart_delete(user: User, gateway: Gateway, slurm_cluster: Cluster) -> None:
    key = user.keygen("id_ed25519", "-t", "ed25519")
    user.ok("ssh-key", "add", f"{key}.pub")
    with gateway.worker():
        made = user(
            "env", "create", "dev", "--gpus", "a100:1", "-c", "1", "--mem", "512M", "-t", "0:30:00",
            "--env", "FOO=bar", "--description", "my box", "--wait", timeout=300,
        )  # fmt: skip
        assert made.returncode == 0, (made.stdout, made.stderr)
        assert re.search(r"created environment dev \([0-9a-f]{32}\) in lab: pending", made.stdout), made.stdout
        assert "environment dev is running on " in made.stdout and "  ssh -p " in made.stdout, made.stdout
        assert re.search(r"dev: pending", made.stderr) and re.search(r"dev: running .*ssh port \d+", made.stderr)

        shown = json.loads(user.ok("env", "show", "dev", "--json"))
        env_id, port = shown["id"], shown["ssh"]["port"]
        assert shown["spec"]["gpus"] == 1 and shown["spec"]["gpu_type"] == "a100"
        assert shown["spec"]["mem_mib"] == 512 and shown["spec"]["time_minutes"] == 30
        assert shown["spec"]["env"] == {"FOO": "bar"} and shown["description"] == "my box"
        text = user.ok("env", "show", env_id[:6])  # a prefix of its id names it too
        assert f"SSH:          ssh -p {port} {user.name}@" in text and "~/.ssh/config:" in text
        assert f"    Port {port}" in text and "GPUs:         a100:1" in text

        listed = user.ok("env", "list").splitlines()
        assert listed[0].split() == ["ID", "NAME", "USER", "STATE", "GPUS", "NODE", "SSH", "AGE", "REASON"]
        row = listed[1].split()
        assert row[:5] == [env_id[:8], "dev", user.name, "running", "a100:1"] and row[6] == str(port), listed
        assert user.ok("env", "list", "--state", "stopped").splitlines()[1:] == []

        # env ssh: OpenSSH's client as the user, their default key, ssh options and a command after --
        slurm_id = shown["session"]["slurm_job_id"]
        inside = user("env", "ssh", "dev", "--", "-o", "BatchMode=yes", "echo $SLURM_JOB_ID; id -un", timeout=60)
        assert inside.returncode == 0, inside.stderr
        assert inside.stdout.split() == [str(slurm_id), user.name]
        known = Path(user.home, ".ssh", "known_hosts")
        found = subprocess.run(["ssh-keygen", "-F", f"remotegpu-env-{env_id}", "-f", str(known)], check=False)
        assert (
            found.returncode == 0
        )  # remembered under the environment (hashed, as Debian's ssh writes it), not the port
        again = user("env", "ssh", env_id, "--", "-o", "BatchMode=yes", "true", timeout=60)
        assert again.returncode == 0, again.stderr
        printed = user.ok("env", "ssh", "--print", "dev", "--", "nvidia-smi")
        assert printed.startswith(f"ssh -p {port} -o HostKeyAlias=remotegpu-env-{env_id} ")
        assert printed.rstrip().endswith(f"{user.name}@{shown['ssh']['host']} nvidia-smi")

        ports = user.ok("env", "ports", "dev").splitlines()
        assert ports[0].split()[:3] == ["SERVICE", "PUBLIC", "PORT"] and ports[1].split()[:2] == ["ssh", str(port)]
        events = user.ok("env", "events", "dev")
        assert "created" in events and "start" in events and "ready" in events

        stopped = user("env", "stop", "dev", "--wait", timeout=180)
        assert stopped.returncode == 0, stopped.stderr
        assert "stop requested for dev" in stopped.stdout and "environment dev is stopped" in stopped.stdout
        assert slurm_id not in squeue_ids(slurm_cluster)  # its GPU is free
        one_line_error(user("env", "ssh", "dev"), "dev is stopped", "remotegpu env start dev --wait")

        started = user("env", "start", "dev", "--wait", timeout=300)
        assert started.returncode == 0 and "environment dev is running" in started.stdout, started.stderr
        assert _session(user, "dev")["number"] == 2
        restarted = user("env", "restart", "dev", "--wait", timeout=300)
        assert restarted.returncode == 0 and "environment dev is running" in restarted.stdout, restarted.stderr
        session = _session(user, "dev")
        assert session["number"] == 3
        final = user("env", "ssh", "dev", "--", "-o", "BatchMode=yes", "echo $SLURM_JOB_ID", timeout=60)
        assert final.returncode == 0 and final.stdout.strip() == str(session["slurm_job_id"]), final.stderr

        assert user.ok("env", "delete", "dev").strip() == f"deleted environment dev ({env_id[:8]})"
        assert json.loads(user.ok("env", "list", "--json")) == []
        one_line_error(user("env", "show", "dev"), "no environment dev in workspace lab")


def test_defined_stopped_found_by_name_or_prefix_and_refused_clearly(user: User) -> None:
    made = user.ok("env", "create", "later", "--no-start", "--tensorboard", "--no-ssh", "--json")
    created = json.loads(made)
    assert created["state"] == "stopped" and created["spec"]["services"] == ["tensorboard"]
    assert user.ok("env", "list", "--state", "stopped").splitlines()[1].split()[:4] == [
        created["id"][:8],
        "later",
        user.name,
        "stopped",
    ]
    assert json.loads(user.ok("env", "show", created["id"][:5], "--json"))["id"] == created["id"]
    assert json.loads(user.ok("env", "show", created["id"].upper(), "--json"))["name"] == "later"
    one_line_error(user("env", "create", "later", "--no-start"), "later")  # the name is taken: 409
    one_line_error(user("env", "create", "Bad Name", "--no-start"), "name")  # the gateway's 400, naming the field
    one_line_error(user("env", "show", "nothing"), "no environment nothing in workspace lab")
    one_line_error(user("env", "show", "Not/A-Name"), "not an environment name or id")
    one_line_error(user("env", "stop", "later"))  # nothing to stop: the gateway's 409, one line
    one_line_error(user("env", "ssh", "later"), "later is stopped")

    bad = user("env", "create", "x", "--mem", "lots")
    assert bad.returncode == 2 and "--mem=lots" in bad.stderr and "Traceback" not in bad.stderr
    bad = user("env", "create", "x", "-t", "forever")
    assert bad.returncode == 2 and "--time=forever" in bad.stderr
    assert json.loads(user.ok("env", "list", "--json"))[0]["name"] == "later"  # nothing else was made

    changed = user.ok("env", "set", "later", "--gpus", "a100:1", "--description", "notes", "--tensorboard")
    assert "from its next start" in changed
    shown = json.loads(user.ok("env", "show", "later", "--json"))
    assert shown["description"] == "notes" and shown["spec"]["gpus"] == 1 and shown["spec"]["gpu_type"] == "a100"
    assert "tensorboard" in shown["spec"]["services"]
    nothing = user("env", "set", "later")
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr

    assert user.ok("env", "delete", "later").startswith("deleted environment later")


def test_wait_shows_slurms_reason_then_gives_up_and_fails_with_why(user: User, gateway: Gateway) -> None:
    with gateway.worker():
        big = user("env", "create", "big", "--gpus", "8", "-t", "5", "--wait", timeout=120)  # nodes have 2
        one_line_error(big, "Requested node configuration is not available")
        assert json.loads(user.ok("env", "list", "--json")) == []  # not made: the name is free for a retry

        r = httpx.patch(f"{gateway.url}{WS}/lab/quota", json={"gpus": 1}, headers=user.admin)
        assert r.status_code == 200, r.text
        for _ in range(60):  # the worker gives Slurm the account's GrpTRES
            quota = httpx.get(f"{gateway.url}{WS}/lab/quota", headers=user.admin).json()
            if quota["slurm_sync"]["state"] == "ok":
                break
            time.sleep(0.5)
        assert quota["slurm_sync"]["state"] == "ok", quota
        user.ok("env", "create", "first", "--gpus", "1", "-t", "5", "--wait", timeout=120)
        held = user("env", "create", "held", "--gpus", "1", "-t", "5", "--wait", "--wait-timeout", "15", timeout=120)
        one_line_error(held, "environment held is still pending after 15s", "remotegpu env show held")
        assert re.search(r"held: pending \(\w*Grp\w*\)", held.stderr), held.stderr
        shown = json.loads(user.ok("env", "show", "held", "--json"))
        assert shown["state"] == "pending"  # giving up the wait stops nothing
