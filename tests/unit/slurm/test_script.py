"""Batch-script rendering: directives, layout, launch; and no user string can inject shell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm.script import JobSpec, ScriptError, directives, render

KEYS = ["ALPHA", "beta_2", "X"]
PROBE = f"import json, os, sys; print(json.dumps([sys.argv[1:], {{k: os.environ.get(k) for k in {KEYS!r}}}]))"


def run_body(spec: JobSpec, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "job.sh"
    script.write_text(render(spec, sbatch_lines=False))
    return subprocess.run(
        ["bash", str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_directives() -> None:
    spec = JobSpec(
        name="train",
        command=["python", "t.py"],
        nodes=2,
        gpus_per_node=4,
        gpu_type="a100",
        cpus_per_task=8,
        mem_mib=65536,
        time_minutes=90,
        partition="gpu",
        qos="high",
        array="0-3%2",
        dependency="afterok:12",
        stdout="logs/%j.out",
        launch="torchrun",
    )
    assert directives(spec) == [
        "#SBATCH --job-name=train",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gres=gpu:a100:4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=65536M",
        "#SBATCH --time=90",
        "#SBATCH --partition=gpu",
        "#SBATCH --qos=high",
        "#SBATCH --output=logs/%j.out",
        "#SBATCH --array=0-3%2",
        "#SBATCH --dependency=afterok:12",
    ]


def test_layout_without_gemini(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    data.mkdir()
    (data / "hello.txt").write_text("hi")
    spec = JobSpec(
        name="j",
        datasets=[str(data)],
        models=[str(tmp_path)],
        command=["bash", "-c", 'cat "$GEMINI_DATA_IN1/hello.txt"; echo " $GEMINI_PRETRAIN $GEMINI_DATA_OUT"'],
    )
    out = run_body(spec, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"hi {tmp_path}/gemini/pretrain {tmp_path}/gemini/output"
    assert (tmp_path / "gemini" / "output").is_dir()


def test_exit_code_is_the_commands(tmp_path: Path) -> None:
    assert run_body(JobSpec(name="j", command=["bash", "-c", "exit 7"]), tmp_path).returncode == 7


def test_user_scripts_are_embedded_verbatim(tmp_path: Path) -> None:
    text = "echo one\ncat <<'EOF'\n$(not run) `nor this`\nEOF\necho \"$0\" >/dev/null\n"
    out = run_body(JobSpec(name="j", script=text), tmp_path)
    assert out.stdout == "one\n$(not run) `nor this`\n", out.stderr


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": "x;y"}, "name"),
        ({"partition": "gpu\n#SBATCH --uid=0"}, "partition"),
        ({"env": {"1BAD": "x"}}, "env.1BAD"),
        ({"env": {"SLURM_JOB_ID": "1"}}, "env.SLURM_JOB_ID"),
        ({"env": {"GEMINI_CODE": "/x"}}, "env.GEMINI_CODE"),
        ({"env": {"A": "nul\x00"}}, "env.A"),
        ({"datasets": ["/a", "/b", "/c", "/d"]}, "datasets"),
        ({"datasets": ["relative/path"]}, "datasets[0]"),
        ({"models": ["/data/../etc"]}, "models[0]"),
        ({"code_dir": "/a//b"}, "code_dir"),
        ({"output_dir": "/out\nx"}, "output_dir"),
        ({"stdout": "../../etc/passwd"}, "stdout"),
        ({"array": "1-3; rm"}, "array"),
        ({"dependency": "afterok:1 --uid=0"}, "dependency"),
        ({"gpu_type": "A100 "}, "gpu_type"),
        ({"image": "$(evil)"}, "image"),
        ({"command": []}, "command"),
        ({"command": None}, "command"),
        ({"nproc_per_node": 2}, "nproc_per_node"),
    ],
)
def test_refusals_name_the_field(changes: dict[str, object], field: str) -> None:
    base = {"name": "ok", "command": ["true"]}
    with pytest.raises(ScriptError) as err:
        render(JobSpec(**{**base, **changes}))  # type: ignore[arg-type]
    assert err.value.field == field


def test_images_need_a_runtime() -> None:
    spec = JobSpec(name="j", command=["python", "x.py"], image="nvcr.io/nvidia/pytorch:24.01-py3")
    with pytest.raises(ScriptError, match="container runtime"):
        render(spec)
    assert "srun --container-image=nvcr.io/nvidia/pytorch:24.01-py3" in render(spec, container_runtime="pyxis")
    assert "apptainer exec --nv" in render(spec, container_runtime="apptainer")


def test_torchrun_launch_line() -> None:
    text = render(JobSpec(name="ddp", command=["train.py", "--lr", "0.1"], nodes=2, gpus_per_node=2, launch="torchrun"))
    assert 'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in text
    assert "NPROC_PER_NODE=2" in text and "srun --ntasks-per-node=1" in text
    assert text.rstrip().endswith("torchrun train.py --lr 0.1")


HOSTILE = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(HOSTILE, max_size=5), values=st.lists(HOSTILE, min_size=3, max_size=3))
def test_hostile_arguments_and_env_values_arrive_byte_for_byte(
    tmp_path: Path, args: list[str], values: list[str]
) -> None:
    env = dict(zip(KEYS, values, strict=True))
    spec = JobSpec(name="probe", command=[sys.executable, "-c", PROBE, *args], env=env)
    out = run_body(spec, tmp_path)
    assert out.returncode == 0, out.stderr
    got_args, got_env = json.loads(out.stdout)
    assert got_args == args
    assert got_env == env
