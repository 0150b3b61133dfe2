"""deploy/dev's venv is made from a Python every user can execute (the CLI is for every POSIX user)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT_ONLY_PYTHON = Path("/root/.pyenv/versions/3.11.7/bin/python3.11")  # this image's pyenv build


def common(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash after sourcing deploy/dev/lib/common.sh."""
    return subprocess.run(
        ["bash", "-c", f'source "{REPO}/deploy/dev/lib/common.sh"; {script}'],
        env={"PATH": os.environ["PATH"], "HOME": "/root", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def root_only_python() -> Path:
    if os.geteuid() != 0 or not ROOT_ONLY_PYTHON.exists():
        pytest.fail(f"needs root and {ROOT_ONLY_PYTHON} (a Python only root can execute) to test the refusal")
    return ROOT_ONLY_PYTHON


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is private to root)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="rgpu-venv-") as made:
        Path(made).chmod(0o755)
        yield Path(made)


def test_pick_python_passes_over_a_python_under_root(root_only_python: Path) -> None:
    picked = common(
        "pick_python", PYTHON=str(root_only_python), PATH=f"{root_only_python.parent}:/usr/bin:/bin"
    )  # no sbin: no runuser
    assert picked.returncode == 0, picked.stderr
    assert picked.stdout.strip() == "/usr/bin/python3"


@pytest.mark.parametrize("path", [os.environ["PATH"], "/usr/bin:/bin"], ids=["runuser-nobody", "permission-bits"])
def test_venvs_other_users_cannot_run_are_told_apart(
    root_only_python: Path, public_dir: Path, tmp_path: Path, path: str
) -> None:
    def make(python: str, where: Path) -> Path:
        subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True, timeout=60)
        return where / "bin" / "python"

    assert common(f'usable_by_all "{make(str(root_only_python), public_dir / "pyenv")}"', PATH=path).returncode != 0
    assert common(f'usable_by_all "{make("/usr/bin/python3", public_dir / "debian")}"', PATH=path).returncode == 0
    assert common(f'usable_by_all "{make("/usr/bin/python3", tmp_path / "private")}"', PATH=path).returncode != 0
