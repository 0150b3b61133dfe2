"""The nodes service against the real dev Salt (deploy/dev/salt: master, salt-api, minions n1 and n2), on both
databases: provision runs driven from the API through salt-api with per-state results stored (a dry run, then an
apply into a scratch root, twice), and a bootstrap from the one-liner to a new minion that answers test.ping."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from sqlalchemy import select, update

from gateway.app import create_app
from gateway.audit.models import AuditEntry
from gateway.config import Settings
from gateway.db.session import Database
from gateway.nodes import runs, service
from gateway.nodes.models import Node, StateResult
from gateway.nodes.salt_results import detected_gpus, job_returns
from gateway.nodes.tokens import minion_finger
from tests.conftest import UserFactory, asgi_client
from tests.integration.salt.conftest import SECRETS_LOCK, SaltStack, secrets_pillar_away
from tests.locks import held

pytestmark = pytest.mark.integration
URL = "/api/v1/nodes"
SECRET = "bootstrap-secret-" + uuid.uuid4().hex
REMOTEGPU = str(Path(sys.executable).parent / "remotegpu")
"""The venv's console script (a clone under /root keeps its venv elsewhere than .venv: deploy/dev/lib)."""
QUICK = runs.RunOptions(lease_seconds=30, backoff_seconds=1)


@pytest.fixture
def munge_key(tmp_path: Path) -> bytes:
    key = os.urandom(1024)
    path = tmp_path / "munge.key"
    path.write_bytes(key)
    path.chmod(0o400)
    return key


@pytest.fixture
def salted(settings: Settings, salt_stack: SaltStack, tmp_path: Path, munge_key: bytes) -> Settings:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return msgspec.structs.replace(
        settings,
        salt_api_url=salt_stack.api_url,
        salt_api_username=salt_stack.username,
        salt_api_password=salt_stack.password,
        salt_api_eauth=salt_stack.eauth,
        salt_master_host="127.0.0.1",
        salt_master_port=10506,
        salt_publish_port=10505,
        node_bootstrap_secret=SECRET,
        munge_key_path=str(tmp_path / "munge.key"),
        node_pillar_root=str(scratch),
        node_poll_seconds=0.3,
    )


@pytest.fixture
async def api(salted: Settings, clean_database: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(salted, database=clean_database)) as c:
        yield c


async def _provision(api: httpx.AsyncClient, root: dict[str, str], path: str, body: dict[str, object]) -> int:
    r = await api.post(f"{URL}{path}", json=body, headers=root)
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def _run(database: Database, settings: Settings, run_id: int) -> None:
    assert await runs.run_due(database, settings, options=QUICK) == [run_id]


async def test_dry_run_then_apply_into_a_scratch_root_with_per_state_results(
    api: httpx.AsyncClient,
    make_user: UserFactory,
    clean_database: Database,
    salted: Settings,
    salt_stack: SaltStack,
    munge_key: bytes,
) -> None:
    root = await make_user("root", admin=True)
    for name in salt_stack.minions:
        body = {"name": name, "address": "127.0.0.1", "gpus": {"type": "a100", "count": 2}}
        assert (await api.post(URL, json=body, headers=root)).status_code == 201

    # a dry run (the default) on both minions: one gateway call, one Salt job each, all at once
    dry = await _provision(api, root, "/provision", {"states": ["remotegpu.munge"]})
    await _run(clean_database, salted, dry)
    run = (await api.get(f"{URL}/runs/{dry}", headers=root)).json()
    assert run["status"] == "done" and run["test"] is True, run["targets"]
    assert [t["node"] for t in run["targets"]] == ["n1", "n2"]
    results = (await api.get(f"{URL}/runs/{dry}/results", headers=root)).json()
    assert results and {r["node"] for r in results} == {"n1", "n2"}
    assert all(r["sls"] == "remotegpu.munge" and r["result"] is not False for r in results), results
    assert any(r["result"] is None and r["changed"] for r in results)  # what an apply would change
    key_file = Path(salted.node_pillar_root, "etc/munge/munge.key")
    assert await asyncio.to_thread(_file, key_file) is None  # a dry run writes nothing
    # what was stored is what Salt returned for that job
    salt = salt_stack.client()
    try:
        jobs = {t["node"]: salt.get(f"/jobs/{t['jid']}").json() for t in run["targets"]}
    finally:
        salt.close()
    for target in run["targets"]:
        returned = job_returns(jobs[target["node"]])[target["node"]]
        stored = [(r["state_id"], r["result"], r["changed"]) for r in results if r["node"] == target["node"]]
        assert stored == [(s.state_id, s.result, s.changed) for s in returned.states]
        assert target["states_total"] == len(stored)

    # applied on n1: the key is written byte for byte, 0400
    applied = await _provision(api, root, "/n1/provision", {"states": ["remotegpu.munge"], "apply": True})
    await _run(clean_database, salted, applied)
    run = (await api.get(f"{URL}/runs/{applied}", headers=root)).json()
    why = (run["targets"], (await api.get(f"{URL}/runs/{applied}/results", headers=root)).json())
    assert run["status"] == "done" and run["test"] is False and run["targets"][0]["states_changed"] > 0, why
    assert await asyncio.to_thread(_file, key_file) == (munge_key, 0o400)
    # again: nothing changes
    again = await _provision(api, root, "/n1/provision", {"states": ["remotegpu.munge"], "apply": True})
    await _run(clean_database, salted, again)
    run = (await api.get(f"{URL}/runs/{again}", headers=root)).json()
    why = (run["targets"], (await api.get(f"{URL}/runs/{again}/results", headers=root)).json())
    assert run["status"] == "done" and run["targets"][0]["states_changed"] == 0, why
    listed = {n["name"]: n["last_run"] for n in (await api.get(URL, headers=root)).json()["items"]}
    assert listed["n1"]["id"] == again and listed["n2"]["id"] == dry

    # the munge key is in no stored result and no audit entry
    secret = base64.b64encode(munge_key).decode()
    async with clean_database.session() as session:
        rows = (await session.scalars(select(StateResult))).all()
        entries = (await session.scalars(select(AuditEntry))).all()
    assert rows and all(secret not in msgspec.json.encode([r.comment, r.changes, r.name]).decode() for r in rows)
    assert all(secret not in msgspec.json.encode(e.details).decode() for e in entries)
    assert {e.action for e in entries} >= {"node.provision", "node.run_submitted", "node.run_node_ended"}


async def test_with_the_masters_secrets_pillar_the_key_stays_out_of_the_job(
    make_user: UserFactory, clean_database: Database, salted: Settings, salt_stack: SaltStack, munge_key: bytes
) -> None:
    """``salt_secrets_pillar`` set: the gateway writes the munge key into the master's secrets pillar (0600) and
    sends none in the run's pillar, so the job Salt keeps (``GET /jobs/<jid>``) does not hold it."""
    secrets = salt_stack.root / "pillar/remotegpu_secrets.sls"
    settings = msgspec.structs.replace(salted, salt_secrets_pillar=str(secrets))
    secret = base64.b64encode(munge_key).decode()
    with held(SECRETS_LOCK), secrets_pillar_away(salt_stack):
        try:
            async with asgi_client(create_app(settings, database=clean_database)) as api:
                root = await make_user("root", admin=True)
                body = {"name": "n1", "address": "127.0.0.1"}
                assert (await api.post(URL, json=body, headers=root)).status_code == 201
                applied = await _provision(api, root, "/n1/provision", {"states": ["remotegpu.munge"], "apply": True})
                await _run(clean_database, settings, applied)
                run = (await api.get(f"{URL}/runs/{applied}", headers=root)).json()
            assert run["status"] == "done", run
            assert stat.S_IMODE(secrets.stat().st_mode) == 0o600 and secret in secrets.read_text()
            key_file = Path(salted.node_pillar_root, "etc/munge/munge.key")
            assert await asyncio.to_thread(_file, key_file) == (munge_key, 0o400)
            salt = salt_stack.client()
            try:
                job = salt.get(f"/jobs/{run['targets'][0]['jid']}").text
            finally:
                salt.close()
            assert "remotegpu.munge" in job and secret[:24] not in job
        finally:
            secrets.unlink(missing_ok=True)


async def test_a_run_whose_worker_dies_is_taken_over_without_a_second_job(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, salted: Settings, salt_stack: SaltStack
) -> None:
    root = await make_user("root", admin=True)
    for name in salt_stack.minions:
        assert (await api.post(URL, json={"name": name, "address": "127.0.0.1"}, headers=root)).status_code == 201
    run_id = await _provision(api, root, "/provision", {"states": ["remotegpu.gemini"]})
    short = runs.RunOptions(lease_seconds=2, backoff_seconds=1)
    salt = service.salt_api(salted)
    assert salt is not None
    claimed = await clean_database.run(lambda s: runs.claim(s, run_id, "worker-a", short.lease_seconds))
    assert claimed
    dying = asyncio.create_task(runs.run_one(clean_database, salted, salt, run_id, "worker-a", short))
    for _ in range(200):  # until both nodes have their job
        got = (await api.get(f"{URL}/runs/{run_id}", headers=root)).json()
        if all(t["jid"] for t in got["targets"]):
            break
        await asyncio.sleep(0.05)
    jids = {t["node"]: t["jid"] for t in got["targets"]}
    assert all(jids.values()), got
    dying.cancel()  # the worker is gone, its lease left to expire
    with contextlib.suppress(asyncio.CancelledError):
        await dying
    await salt.close()
    assert await runs.run_due(clean_database, salted, options=short, owner="worker-b") == []  # still leased
    await asyncio.sleep(2.2)
    assert await runs.run_due(clean_database, salted, options=short, owner="worker-b") == [run_id]
    run = (await api.get(f"{URL}/runs/{run_id}", headers=root)).json()
    assert run["status"] == "done" and run["attempts"] == 2, run["targets"]
    assert {t["node"]: t["jid"] for t in run["targets"]} == jids  # followed, not submitted again
    assert len(await _entries(clean_database, "node.run_submitted")) == 2
    assert len(await _entries(clean_database, "node.run_node_ended")) == 2


async def _entries(database: Database, action: str) -> list[AuditEntry]:
    async with database.session() as session:
        return list((await session.scalars(select(AuditEntry).where(AuditEntry.action == action))).all())


def _file(path: Path) -> tuple[bytes, int] | None:
    """A file's bytes and mode bits; None when there is none."""
    if not path.exists():
        return None
    return path.read_bytes(), path.stat().st_mode & 0o777


async def test_detected_gpus_come_from_the_nodes_grains(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, salted: Settings, salt_stack: SaltStack
) -> None:
    """n2 has no GPU Salt can see (its ``gpus`` grain, from lspci): a "detect" node is found to have none."""
    root = await make_user("root", admin=True)
    assert (await api.post(URL, json={"name": "n2", "address": "127.0.0.1", "gpus": "detect"}, headers=root)).is_success
    grain = salt_stack.call("grains.item", tgt="n2", arg=["gpus"])["n2"]["gpus"]
    async with clean_database.session() as session:  # what an earlier detection found: asked again, replaced
        await session.execute(update(Node).where(Node.name == "n2").values(gpu_type="v100", gpu_count=5))
        await session.commit()
    run_id = await _provision(api, root, "/n2/provision", {"states": ["remotegpu.gemini"]})
    await _run(clean_database, salted, run_id)
    assert (await api.get(f"{URL}/runs/{run_id}", headers=root)).json()["status"] == "done"
    node = (await api.get(f"{URL}/n2", headers=root)).json()
    kind, count = detected_gpus(grain)
    assert node["gpus"] == {"type": kind, "count": count, "detect": True}


async def test_a_failing_sls_fails_the_run_with_why(
    api: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, salted: Settings
) -> None:
    """A node removed from the master (no key) and a missing key file: the run fails, saying so."""
    root = await make_user("root", admin=True)
    assert (await api.post(URL, json={"name": "ghost", "address": "127.0.0.1"}, headers=root)).status_code == 201
    ghost = await _provision(api, root, "/ghost/provision", {"states": ["remotegpu.gemini"]})
    for _ in range(3):  # salt-api starts no job on a minion it does not know: three attempts, then failed
        await runs.run_due(clean_database, salted, options=runs.RunOptions(backoff_seconds=0))
    run = (await api.get(f"{URL}/runs/{ghost}", headers=root)).json()
    assert run["status"] == "failed" and run["attempts"] == 3 and "started no job" in run["error"], run
    assert run["targets"][0]["status"] == "failed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(salted: Settings, clean_database: Database, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``remotegpu serve`` on the test's database with the Salt settings; (its URL, its log)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTEGPU_")}
    env.update(
        REMOTEGPU_DATABASE_URL=salted.database_url,
        REMOTEGPU_PUBLIC_URL=url,
        REMOTEGPU_RELAY_ENABLED="false",
        REMOTEGPU_SALT_API_URL=str(salted.salt_api_url),
        REMOTEGPU_SALT_API_USERNAME=salted.salt_api_username,
        REMOTEGPU_SALT_API_PASSWORD=str(salted.salt_api_password),
        REMOTEGPU_SALT_MASTER_HOST="127.0.0.1",
        REMOTEGPU_SALT_MASTER_PORT="10506",
        REMOTEGPU_SALT_PUBLISH_PORT="10505",
        REMOTEGPU_NODE_BOOTSTRAP_SECRET=SECRET,
        REMOTEGPU_LOG_LEVEL="DEBUG",
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [REMOTEGPU, "serve", "--port", str(port), "--no-migrate"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _stop_minion(pidfile: Path) -> None:
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


async def test_bootstrap_from_the_one_liner_to_a_minion_that_answers(
    served: tuple[str, Path],
    make_user: UserFactory,
    salt_stack: SaltStack,
    tmp_path: Path,
) -> None:
    root = await make_user("root", admin=True)
    await asyncio.to_thread(_bootstrap, served, root, salt_stack, tmp_path)


def _bootstrap(served: tuple[str, Path], root: dict[str, str], salt_stack: SaltStack, tmp_path: Path) -> None:
    url, log = served
    node = f"rgt-{uuid.uuid4().hex[:8]}"
    cli_env = {
        "PATH": os.environ["PATH"],
        "REMOTEGPU_URL": url,
        "REMOTEGPU_TOKEN": root["Authorization"].removeprefix("Bearer "),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([REMOTEGPU, "node", *argv], env=cli_env, capture_output=True, text=True, timeout=60)

    made = cli("add", node, "--address", "127.0.0.1")
    assert made.returncode == 0 and made.stdout.startswith(f"registered node {node}\n"), made.stderr
    command = made.stdout.strip().splitlines()[-1]
    words = shlex.split(command.split("|", 1)[1])
    token = next(w for w in words if w.startswith("REMOTEGPU_TOKEN=")).removeprefix("REMOTEGPU_TOKEN=")
    assert token.startswith(f"{node}.")

    # the minion's own root: its config dir is where the script writes (REMOTEGPU_SALT_DIR)
    minion_root = Path("/var/tmp") / f"rgt-minion-{uuid.uuid4().hex[:8]}"  # short: Salt's sockets live under it
    salt_dir = minion_root / "etc" / "salt"
    salt_dir.mkdir(parents=True)
    (salt_dir / "minion").write_text(f"root_dir: {minion_root}\nuser: root\nacceptance_wait_time: 1\n")
    pidfile = minion_root / "var/run/salt-minion.pid"
    try:
        env = {"PATH": os.environ["PATH"], "REMOTEGPU_SALT_DIR": str(salt_dir)}
        done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"bootstrap: minion {node}, master 127.0.0.1:10506" in done.stdout
        pki = salt_dir / "pki" / "minion"
        assert (pki / "minion.pem").stat().st_mode & 0o777 == 0o400
        assert "master_finger" in (salt_dir / "minion.d" / "remotegpu.conf").read_text()

        # the master accepted exactly that key, and the finger handed out is the one the minion checks
        # (wheel key.key_str and key.finger fail on 3008.3 with UnboundLocalError: the master's file is read)
        accepted = (salt_stack.root / "master/etc/salt/pki/master/minions" / node).read_text()
        assert accepted.strip() == (pki / "minion.pub").read_text().strip()
        master_finger = salt_stack.call("key.finger_master", client="wheel")["data"]["return"]["local"]["master.pub"]
        assert minion_finger((pki / "minion_master.pub").read_text()) == master_finger

        # a real minion with what the script wrote: up without any salt-key step (master_finger accepted)
        salt_minion = salt_stack.salt_bin / "salt-minion"
        subprocess.run([str(salt_minion), "-c", str(salt_dir), "-d"], check=True, timeout=60)
        deadline = time.monotonic() + 60
        while salt_stack.call("test.ping", tgt=node, timeout=30).get(node) is not True:
            assert time.monotonic() < deadline, (minion_root / "var/log/salt/minion").read_text()[-3000:]
            time.sleep(1)

        listed = cli("list", "--json")
        assert listed.returncode == 0, listed.stderr
        mine = next(n for n in json.loads(listed.stdout)["items"] if n["name"] == node)
        assert mine["key_state"] == "bootstrapped" and mine["bootstrapped_at"]
        shown = cli("show", node)
        assert shown.returncode == 0 and "key:         bootstrapped" in shown.stdout, shown.stderr

        # the same token again: 401
        again = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "refused the token" in again.stderr
        text = log.read_text()
        assert token not in text and "PRIVATE KEY" not in text
    finally:
        _stop_minion(pidfile)
        removed = cli("remove", node, "--yes")
        assert removed.returncode == 0 and removed.stdout == f"removed node {node}\n", removed.stderr
        keys = salt_stack.call("key.list_all", client="wheel")["data"]["return"]
        assert node not in keys.get("minions", []) and node not in keys.get("minions_pre", [])
        shutil.rmtree(minion_root, ignore_errors=True)
