"""The submitter's environment: what crosses, sbatch's --export syntax, and the reader that hands it to sbatch."""

from __future__ import annotations

import subprocess

import pytest

from slurm import environment
from slurm.environment import EnvironmentRefused, block, check, check_export, crossing, submit_dir, submitted

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "name",
    [
        "REMOTEGPU_TOKEN",
        "REMOTEGPU_PASSWORD",
        "REMOTEGPU_URL",
        "LD_PRELOAD",
        "LD_AUDIT",
        "SBATCH_EXPORT",
        "SBATCH_GET_USER_ENV",
        "SBATCH_PARTITION",
        "SLURM_CONF",
        "SLURM_EXIT_ERROR",
        "SLURM_DEBUG_FLAGS",
        "SHELLOPTS",
        "BASH_FUNC_module%%",
        "A-B",
        "1X",
        "",
    ],
)
def test_what_never_crosses(name: str) -> None:
    assert not crossing(name)
    assert submitted({name: "x", "KEEP": "1"}) == {"KEEP": "1"}


@pytest.mark.parametrize("name", ["PATH", "HOME", "LD_LIBRARY_PATH", "SLURM_UMASK", "SLURM_JOB_ID", "_", "CUDA_HOME"])
def test_what_crosses(name: str) -> None:
    assert crossing(name)


def test_an_api_caller_gets_a_400_naming_a_bad_variable_and_the_dropped_ones_are_dropped() -> None:
    assert check({"A": "1", "REMOTEGPU_TOKEN": "secret", "LD_PRELOAD": "/x.so"}) == {"A": "1"}
    with pytest.raises(EnvironmentRefused) as bad:
        check({"BAD-NAME": "x"})
    assert bad.value.field == "environment.BAD-NAME"
    with pytest.raises(EnvironmentRefused) as nul:
        check({"A": "x\x00y"})
    assert nul.value.field == "environment.A"
    with pytest.raises(EnvironmentRefused) as unprintable:
        check({"A\nB": "x"})
    assert unprintable.value.field == "environment"


@pytest.mark.parametrize(
    "export", ["ALL", "NONE", "none", "ALL,FOO=bar", "FOO", "FOO,BAR=a b=c", "ALL,EDITOR=/bin/emacs", "A=,B"]
)
def test_sbatch_export_values_are_accepted(export: str) -> None:
    check_export(export)


@pytest.mark.parametrize("export", ["", "NONE,FOO=1", "FOO=a\nb", "1X", "A=x,", ",A", "A=\x00", "A;B"])
def test_bad_export_values_are_refused(export: str) -> None:
    with pytest.raises(EnvironmentRefused) as refused:
        check_export(export)
    assert refused.value.field == "export"


def _read(env: dict[str, str], forced: dict[str, str], rest: bytes) -> tuple[dict[str, str], bytes]:
    """Run the reader with /usr/bin/env in sbatch's place: the environment it execs with, and the stdin left."""
    script = 'env -0; printf "\\x01"; exec cat'
    done = subprocess.run(
        ["/bin/bash", "-c", environment.READER, "/bin/bash", "-c", script],
        input=block(env, forced) + rest,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "SHELL": "/bin/sh"},
        cwd=submit_dir(env),
        check=True,
    )
    printed, _, left = done.stdout.partition(b"\x01")
    entries = [e.decode() for e in printed.split(b"\x00") if e]
    return dict(e.split("=", 1) for e in entries), left


def test_the_reader_exports_every_value_verbatim_and_leaves_the_script_on_stdin() -> None:
    tricky = {
        "PATH": "/usr/bin:/bin",
        "QUOTES": 'it\'s "quoted" $(touch /tmp/pwned) `id` ; rm -rf /',
        "NEWLINES": "a\nb\n",
        "EMPTY": "",
        "EQUALS": "a=b=c",
        "PWD": "/tmp",
    }
    env, left = _read(
        {**tricky, "REMOTEGPU_TOKEN": "secret"}, {"SLURM_CONF": "/etc/slurm.conf"}, b"#!/bin/bash\necho hi\n"
    )
    assert left == b"#!/bin/bash\necho hi\n"
    for name, value in tricky.items():
        assert env[name] == value, name
    assert env["SLURM_CONF"] == "/etc/slurm.conf"
    # nothing of the helper's own environment, nor what never crosses
    assert "REMOTEGPU_TOKEN" not in env and "LANG" not in env and "HOME" not in env and "SHELL" not in env


def test_the_forced_variables_win_and_shlvl_is_left_as_it_was() -> None:
    env, _ = _read({"SLURM_CONF": "/theirs", "SHLVL": "3"}, {"SLURM_CONF": "/ours"}, b"")
    assert env["SLURM_CONF"] == "/ours"
    assert env["SHLVL"] == "4"  # the printing bash's own level: one above what the reader was given


def test_a_submitter_without_shlvl_gives_sbatch_none() -> None:
    """``env -i remotegpu submit``: the reader's own level must not reach sbatch (the job saw SHLVL 2, not 1)."""
    env, _ = _read({"SLURM_CONF": "/theirs"}, {"SLURM_CONF": "/ours"}, b"")
    assert env["SHLVL"] == "1"  # the printing bash's own, from none


def test_sbatch_runs_in_the_submitters_directory_where_it_exists() -> None:
    assert submit_dir({"PWD": "/tmp"}) == "/tmp"
    assert submit_dir({"PWD": "/nonexistent/dir"}) == "/"
    assert submit_dir({"PWD": "relative"}) == "/"
    assert submit_dir({}) == "/" and submit_dir(None) == "/"
