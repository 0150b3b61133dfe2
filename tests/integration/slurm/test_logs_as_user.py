"""The logs endpoint opens the file as the job's user: it tells nothing a user could not learn with ``cat``.

It used to read as root and answer differently for a path the user cannot reach: 200 and no lines (nothing
there), 200 with the content (the user's file in a directory closed to them), 403 "not a regular file" (a FIFO or
a directory), 403 "does not belong" (someone else's file). Now each of these is one and the same refusal.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import UserFactory
from tests.integration.slurm.conftest import WS, PosixUserFactory, make_team


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every user can look into (pytest's tmp_path is closed to all but root)."""
    path = Path(tempfile.mkdtemp(prefix="remotegpu-logs-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


async def test_a_path_the_user_cannot_reach_gets_one_answer_whatever_is_there(
    api: httpx.AsyncClient, make_user: UserFactory, posix_user: PosixUserFactory, slurm_account: str, shared: Path
) -> None:
    team = await make_team(api, make_user, posix_user, slurm_account)
    alice = pwd.getpwnam(team["names"]["alice"])
    closed = shared / "closed"  # root's, mode 0700: alice cannot look inside
    closed.mkdir(mode=0o700)
    target = closed / "out.log"
    body = {"name": "held", "command": ["true"], "hold": True, "stdout": str(target)}
    job = (await api.post(f"{WS}/lab/jobs", json=body, headers=team["alice"])).json()
    logs = f"{WS}/lab/jobs/{job['id']}/logs"

    def nothing() -> None:
        """The path stays missing."""

    def alices_file() -> None:
        target.write_text("secret that alice wrote before the directory was closed\n")
        os.chown(target, alice.pw_uid, alice.pw_gid)

    def fifo() -> None:
        os.mkfifo(target)

    def directory() -> None:
        target.mkdir()

    def roots_file() -> None:
        target.write_text("root's\n")

    answers = []
    try:
        for make in (nothing, alices_file, fifo, directory, roots_file):
            make()
            plain = await api.get(logs, headers=team["alice"])
            followed = await api.get(logs, params={"follow": "true"}, headers=team["alice"])
            answers.append((make.__name__, plain.status_code, plain.json()["detail"], followed.status_code))
            assert "secret" not in plain.text + followed.text
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        refusal = (403, f"{target} cannot be read by the job's user", 403)
        assert [a[1:] for a in answers] == [refusal] * 5, answers

        # where alice can look, she is told what she could see herself
        closed.chmod(0o755)
        assert (await api.get(logs, headers=team["alice"])).json()["lines"] == []  # not there yet
        target.write_text("root's, readable by all\n")
        assert (await api.get(logs, headers=team["alice"])).json()["lines"] == ["root's, readable by all"]
        target.chmod(0o600)
        assert (await api.get(logs, headers=team["alice"])).status_code == 403
    finally:
        await api.post(f"{WS}/lab/jobs/{job['id']}/cancel", headers=team["alice"])
