"""/api/v1/me/ssh-keys on SQLite and PostgreSQL: add, list, delete, who may, and what sshd is given."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select

from gateway.accounts.models import User
from gateway.accounts.ssh_keys import MAX_KEYS_PER_USER, authorized_keys, authorized_keys_sync
from gateway.audit.models import AuditEntry
from gateway.db.session import Database
from tests.conftest import UserFactory

KEYS = "/api/v1/me/ssh-keys"
PROBLEM = "application/problem+json"

pytestmark = pytest.mark.integration


def _keygen(directory: Path, name: str, *args: str) -> tuple[str, str]:
    """A key made by ssh-keygen: its public line and the fingerprint ``ssh-keygen -lf`` prints."""
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(path), *args], check=True, capture_output=True)
    listed = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True)
    return Path(f"{path}.pub").read_text(), listed.stdout.split()[1]


@pytest.fixture(scope="module")
def real_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    d = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": _keygen(d, "ed", "-t", "ed25519", "-C", "alice@laptop"),
        "ecdsa": _keygen(d, "ec", "-t", "ecdsa", "-b", "384", "-C", ""),
        "rsa": _keygen(d, "rsa", "-t", "rsa", "-b", "3072", "-C", "alice@old box"),
        "rsa2048": _keygen(d, "rsa2048", "-t", "rsa", "-b", "2048"),
    }


def _problem_field(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    field: str = r.json()["errors"][0]["field"]
    return field


async def _user_id(database: Database, name: str) -> int:
    async with database.session() as session:
        user_id = await session.scalar(select(User.id).where(User.name == name))
    assert user_id is not None
    return user_id


async def test_a_token_is_needed(client: httpx.AsyncClient, real_keys: dict[str, tuple[str, str]]) -> None:
    for r in (
        await client.get(KEYS),
        await client.post(KEYS, json={"public_key": real_keys["ed25519"][0]}),
        await client.delete(f"{KEYS}/1"),
    ):
        assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)


async def test_add_list_and_delete(
    client: httpx.AsyncClient,
    make_user: UserFactory,
    clean_database: Database,
    real_keys: dict[str, tuple[str, str]],
) -> None:
    alice = await make_user("alice")
    assert (await client.get(KEYS, headers=alice)).json() == []

    ed_line, ed_fp = real_keys["ed25519"]
    r = await client.post(KEYS, json={"public_key": ed_line}, headers=alice)
    assert r.status_code == 201, r.text
    ed = r.json()
    assert ed["name"] == "alice@laptop" and ed["fingerprint"] == ed_fp
    assert (ed["key_type"], ed["bits"]) == ("ssh-ed25519", 256)
    assert ed["public_key"] == " ".join(ed_line.split()[:2])

    ec_line, ec_fp = real_keys["ecdsa"]
    ec = (await client.post(KEYS, json={"public_key": ec_line, "name": "work laptop"}, headers=alice)).json()
    assert (ec["name"], ec["key_type"], ec["bits"], ec["fingerprint"]) == (
        "work laptop",
        "ecdsa-sha2-nistp384",
        384,
        ec_fp,
    )
    rsa_line, rsa_fp = real_keys["rsa"]
    uncommented = " ".join(rsa_line.split()[:2])
    rsa = (await client.post(KEYS, json={"public_key": uncommented}, headers=alice)).json()
    assert rsa["name"] == rsa_fp and rsa["bits"] == 3072  # no name and no comment: the fingerprint

    listed = (await client.get(KEYS, headers=alice)).json()
    assert [k["id"] for k in listed] == [ed["id"], ec["id"], rsa["id"]]

    user_id = await _user_id(clean_database, "alice")
    async with clean_database.session() as session:
        lines = await authorized_keys(session, user_id)
    assert lines == [f"{ed['public_key']} alice@laptop", f"{ec['public_key']} work_laptop", f"{uncommented} {rsa_fp}"]
    assert await clean_database.run(lambda s: authorized_keys_sync(s, user_id), write=False) == lines

    assert (await client.delete(f"{KEYS}/{ec['id']}", headers=alice)).status_code == 204
    assert [k["id"] for k in (await client.get(KEYS, headers=alice)).json()] == [ed["id"], rsa["id"]]
    assert (await client.delete(f"{KEYS}/{ec['id']}", headers=alice)).status_code == 404

    async with clean_database.session() as session:
        audit = (
            await session.execute(
                select(AuditEntry.action, AuditEntry.actor_name, AuditEntry.target, AuditEntry.details)
                .where(AuditEntry.target_type == "ssh_key")
                .order_by(AuditEntry.id)
            )
        ).all()
    assert [(a, who, target) for a, who, target, _ in audit] == [
        ("ssh_key.add", "alice", f"alice/{ed_fp}"),
        ("ssh_key.add", "alice", f"alice/{ec_fp}"),
        ("ssh_key.add", "alice", f"alice/{rsa_fp}"),
        ("ssh_key.delete", "alice", f"alice/{ec_fp}"),
    ]
    assert audit[1][3] == {"id": ec["id"], "name": "work laptop", "key_type": "ecdsa-sha2-nistp384", "bits": 384}


async def test_a_duplicate_is_a_conflict_on_public_key(
    client: httpx.AsyncClient, make_user: UserFactory, real_keys: dict[str, tuple[str, str]]
) -> None:
    alice = await make_user("alice")
    line = real_keys["ed25519"][0]
    assert (await client.post(KEYS, json={"public_key": line}, headers=alice)).status_code == 201
    # the same key with another comment, other spacing or a name is still the same key
    for again in (line, line.replace(" alice@laptop", " other"), "  " + line.replace(" ", "\t", 1)):
        r = await client.post(KEYS, json={"public_key": again, "name": "again"}, headers=alice)
        assert _problem_field(r, 409) == "public_key"
    assert len((await client.get(KEYS, headers=alice)).json()) == 1


async def test_the_same_key_may_belong_to_two_users(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, real_keys: dict[str, tuple[str, str]]
) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    line = real_keys["ed25519"][0]
    assert (await client.post(KEYS, json={"public_key": line}, headers=alice)).status_code == 201
    assert (await client.post(KEYS, json={"public_key": line}, headers=bob)).status_code == 201
    async with clean_database.session() as session:
        bob_lines = await authorized_keys(session, await _user_id(clean_database, "bob"))
    assert len(bob_lines) == 1


async def test_nobody_sees_or_deletes_someone_elses_key(
    client: httpx.AsyncClient, make_user: UserFactory, clean_database: Database, real_keys: dict[str, tuple[str, str]]
) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    key = (await client.post(KEYS, json={"public_key": real_keys["ed25519"][0]}, headers=alice)).json()
    assert (await client.get(KEYS, headers=bob)).json() == []
    r = await client.delete(f"{KEYS}/{key['id']}", headers=bob)
    assert r.status_code == 404 and r.headers["content-type"].startswith(PROBLEM)
    assert (await client.delete(f"{KEYS}/{key['id'] + 1000}", headers=alice)).status_code == 404
    assert [k["id"] for k in (await client.get(KEYS, headers=alice)).json()] == [key["id"]]
    async with clean_database.session() as session:
        bob_lines = await authorized_keys(session, await _user_id(clean_database, "bob"))
    assert bob_lines == []


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"public_key": "rsa2048"}, "public_key", "3072"),
        ({"public_key": "options"}, "public_key", "options"),
        ({"public_key": "two lines"}, "public_key", "one key line"),
        ({"public_key": "not a key at all"}, "public_key", "must start with"),
        ({"public_key": ""}, "public_key", ""),
        ({}, "public_key", ""),
        ({"public_key": "ed25519", "name": ""}, "name", ""),
        ({"public_key": "ed25519", "name": "a\nb"}, "name", ""),
        ({"public_key": "ed25519", "name": "x" * 65}, "name", ""),
        ({"public_key": "ed25519", "colour": "red"}, "colour", ""),
    ],
)
async def test_bad_input_names_its_field(
    body: dict[str, str],
    field: str,
    says: str,
    client: httpx.AsyncClient,
    make_user: UserFactory,
    real_keys: dict[str, tuple[str, str]],
) -> None:
    alice = await make_user("alice")
    ed = real_keys["ed25519"][0]
    stand_ins = {
        "ed25519": ed,
        "rsa2048": real_keys["rsa2048"][0],
        "options": 'command="/bin/sh",no-pty ' + ed,
        "two lines": ed + real_keys["ecdsa"][0],
    }
    if "public_key" in body:
        body = {**body, "public_key": stand_ins.get(body["public_key"], body["public_key"])}
    r = await client.post(KEYS, json=body, headers=alice)
    assert _problem_field(r, 400) == field
    assert says in r.json()["detail"]
    assert (await client.get(KEYS, headers=alice)).json() == []


async def test_bad_key_ids_are_refused(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    alice = await make_user("alice")
    for bad in ("0", "-1", "abc", str(2**31), str(2**70)):
        r = await client.delete(f"{KEYS}/{bad}", headers=alice)
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert r.headers["content-type"].startswith(PROBLEM)


def _fresh_key(i: int) -> str:
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + f" key{i}"


async def test_at_most_fifty_keys_per_user(client: httpx.AsyncClient, make_user: UserFactory) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    for i in range(MAX_KEYS_PER_USER):
        r = await client.post(KEYS, json={"public_key": _fresh_key(i)}, headers=alice)
        assert r.status_code == 201, r.text
    r = await client.post(KEYS, json={"public_key": _fresh_key(99)}, headers=alice)
    assert _problem_field(r, 400) == "public_key" and str(MAX_KEYS_PER_USER) in r.json()["detail"]
    assert (await client.post(KEYS, json={"public_key": _fresh_key(100)}, headers=bob)).status_code == 201
    first = (await client.get(KEYS, headers=alice)).json()[0]
    assert (await client.delete(f"{KEYS}/{first['id']}", headers=alice)).status_code == 204
    assert (await client.post(KEYS, json={"public_key": _fresh_key(101)}, headers=alice)).status_code == 201
