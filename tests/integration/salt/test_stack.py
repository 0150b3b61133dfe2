"""The dev Salt stack as the gateway sees it: salt-api logins, the minions, and deploy/dev/salt/status."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.integration.salt.conftest import REPO, SaltStack
from tests.locks import held

pytestmark = pytest.mark.integration


def test_minions_answer_through_salt_api(salt_stack: SaltStack) -> None:
    assert salt_stack.call("test.ping", tgt=salt_stack.minions) == {"n1": True, "n2": True}
    status = salt_stack.call("manage.status", client="runner")
    assert sorted(status["up"]) == ["n1", "n2"]


def test_wrong_secret_is_refused(salt_stack: SaltStack) -> None:
    body = {"username": salt_stack.username, "password": salt_stack.password + "x", "eauth": salt_stack.eauth}
    response = httpx.post(salt_stack.api_url + "/login", json=body, headers={"Accept": "application/json"})
    assert response.status_code == 401


def test_secret_file_is_private(salt_stack: SaltStack) -> None:
    secret = salt_stack.root / "api-secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.read_text().strip() == salt_stack.password


def test_status_and_idempotent_up(salt_stack: SaltStack) -> None:
    status = subprocess.run([str(REPO / "deploy/dev/salt/status")], capture_output=True, text=True, check=False)
    assert status.returncode == 0, status.stdout
    assert "salt-api: running" in status.stdout and "salt-minion n2: running" in status.stdout
    pids = status.stdout
    with held("salt-up"):  # not beside another test process's deploy/dev/salt/up
        again = subprocess.run([str(REPO / "deploy/dev/salt/up")], capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    after = subprocess.run([str(REPO / "deploy/dev/salt/status")], capture_output=True, text=True, check=False)
    assert after.stdout == pids  # nothing restarted
