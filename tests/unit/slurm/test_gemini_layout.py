"""Each job (and array task) gets its own /gemini layout: bodies of two concurrent jobs run with bash.

Regression (issue 8): jobs sharing a working directory shared the fallback layout, so the first job read the
second one's dataset, and an output_dir link landed inside an earlier job's real output directory.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from slurm.script import JobSpec, render

pytestmark = pytest.mark.unit

_WAIT_THEN_READ = 'while [ ! -e go ]; do sleep 0.02; done; cat "$GEMINI_DATA_IN1/name"; echo " $GEMINI_DATA_OUT"'


def _start(spec: JobSpec, cwd: Path, gemini_root: Path, **slurm: str) -> subprocess.Popen[bytes]:
    script = cwd / f"job-{slurm['SLURM_JOB_ID']}.sh"
    script.write_text(render(spec, sbatch_lines=False, gemini_root=str(gemini_root)))
    env = {"PATH": "/usr/bin:/bin", **slurm}
    return subprocess.Popen(["bash", str(script)], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _dataset(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "name").write_text(name)
    return path


@pytest.mark.parametrize("writable_gemini", [False, True])
def test_two_concurrent_jobs_in_one_directory_each_see_their_own_dataset(tmp_path: Path, writable_gemini: bool) -> None:
    work = tmp_path / "work"
    work.mkdir()
    gemini = tmp_path / "gemini"
    if writable_gemini:
        gemini.mkdir()
    first, second = _dataset(tmp_path, "first"), _dataset(tmp_path, "second")
    command = ["bash", "-c", _WAIT_THEN_READ]
    a = _start(JobSpec(name="a", datasets=[str(first)], command=command), work, gemini, SLURM_JOB_ID="101")
    time.sleep(0.3)  # a has laid out its paths and waits
    b = _start(JobSpec(name="b", datasets=[str(second)], command=command), work, gemini, SLURM_JOB_ID="102")
    time.sleep(0.3)
    (work / "go").touch()
    out_a, err_a = a.communicate(timeout=10)
    out_b, err_b = b.communicate(timeout=10)
    assert a.returncode == 0 and b.returncode == 0, (err_a, err_b)
    seen_a, out_dir_a = out_a.decode().split()
    seen_b, out_dir_b = out_b.decode().split()
    assert (seen_a, seen_b) == ("first", "second")
    assert out_dir_a != out_dir_b


def test_an_output_dir_link_never_lands_inside_an_earlier_jobs_output(tmp_path: Path) -> None:
    work, wanted = tmp_path / "work", tmp_path / "results"
    work.mkdir()
    wanted.mkdir()
    gemini = tmp_path / "no-gemini"
    report = ["bash", "-c", 'readlink -f "$GEMINI_DATA_OUT"']
    first = _start(JobSpec(name="a", command=report), work, gemini, SLURM_JOB_ID="201")
    assert first.communicate(timeout=10)[0].decode().strip() != str(wanted)  # an empty output dir of its own
    second = _start(JobSpec(name="b", output_dir=str(wanted), command=report), work, gemini, SLURM_JOB_ID="202")
    out, err = second.communicate(timeout=10)
    assert second.returncode == 0, err
    assert out.decode().strip() == str(wanted)
    assert not list(wanted.iterdir())  # no link was made inside anything


def test_array_tasks_get_their_own_layout(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    spec = JobSpec(name="a", array="0-1", command=["bash", "-c", 'echo "$GEMINI_CODE"'])
    dirs = []
    for task in ("0", "1"):
        job = _start(
            spec,
            work,
            tmp_path / "no-gemini",
            SLURM_JOB_ID=f"30{task}",
            SLURM_ARRAY_JOB_ID="300",
            SLURM_ARRAY_TASK_ID=task,
        )
        dirs.append(job.communicate(timeout=10)[0].decode().strip())
    assert dirs == [f"{work}/.gemini/300_0/code", f"{work}/.gemini/300_1/code"]
