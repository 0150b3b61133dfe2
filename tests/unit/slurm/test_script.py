"""Batch-script rendering: directives, layout, launch; and no user string can inject shell or directives.

The body of each script is run for real with bash. Slurm's and the container runtimes' commands (srun,
scontrol, torchrun, apptainer) are replaced by small fakes on PATH that check and log what they were given,
then run the rest of their command line, so the quoting of every path through the script is exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from slurm.directives import Options, script_directives
from slurm.script import JobSpec, ScriptError, StageIn, StageInProgram, directives, render

KEYS = ["ALPHA", "beta_2", "X"]
PROBE = (
    "import json, os, sys; d = os.environ.get('GEMINI_DATA_IN1'); "
    f"print(json.dumps([sys.argv[1:], {{k: os.environ.get(k) for k in {KEYS!r}}}, d and os.readlink(d)]))"
)
FAKES = {
    # srun OPTIONS... PROGRAM...: logs its options, checks container mounts exist, runs PROGRAM as node 0
    "srun": r"""#!/bin/bash
while [ $# -gt 0 ]; do
  case "$1" in
    --container-mounts=*) IFS=, read -ra m <<< "${1#*=}"
      for b in "${m[@]}"; do [ -e "${b%%:*}" ] || { echo "missing mount source ${b%%:*}" >&2; exit 97; }; done ;;
  esac
  case "$1" in --*) printf '%s\n' "$1" >> "$FAKE_LOG/srun"; shift ;; *) break ;; esac
done
SLURM_NODEID=0 exec "$@"
""",
    "scontrol": "#!/bin/bash\n[ \"$1 $2\" = 'show hostnames' ] && printf 'n1\\nn2\\n'\n",
    # torchrun --opt=value... PROGRAM...: logs the options, runs PROGRAM
    "torchrun": r"""#!/bin/bash
while [ $# -gt 0 ]; do case "$1" in --*=*) printf '%s\n' "$1" >> "$FAKE_LOG/torchrun"; shift ;; *) break ;; esac; done
exec "$@"
""",
    # apptainer exec --nv --bind SRC:DST[:ro]... IMAGE PROGRAM...: checks bind sources exist, runs PROGRAM
    "apptainer": r"""#!/bin/bash
[ "$1 $2" = "exec --nv" ] || exit 98; shift 2
while [ "$1" = --bind ]; do
  [ -e "${2%%:*}" ] || { echo "missing bind source ${2%%:*}" >&2; exit 97; }
  printf '%s\n' "$2" >> "$FAKE_LOG/binds"; shift 2
done
printf '%s\n' "$1" > "$FAKE_LOG/image"; shift
exec "$@"
""",
}


@pytest.fixture
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("fake-bin")
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_body(
    spec: JobSpec, cwd: Path, *, fake_bin: Path | None = None, runtime: str | None = None, gemini_root: str = ""
) -> subprocess.CompletedProcess[bytes]:
    """Run the script without its #SBATCH lines, as the batch step would (PWD = the working directory)."""
    script = cwd / "job.sh"
    root = gemini_root or str(cwd / "no-such-gemini")
    script.write_text(render(spec, sbatch_lines=False, container_runtime=runtime, gemini_root=root))  # type: ignore[arg-type]
    log = cwd / "log"
    log.mkdir(exist_ok=True)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin" if fake_bin else "/usr/bin:/bin", "FAKE_LOG": str(log)}
    # two nodes where srun is the fake (the layout is then made through it, once per node), else one
    nodes = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2"} if fake_bin else {"SLURM_JOB_NUM_NODES": "1"}
    env |= {**nodes, "SLURM_JOB_ID": "42"}
    return subprocess.run(["bash", str(script)], cwd=cwd, capture_output=True, timeout=30, env=env, check=False)


def probe_output(out: subprocess.CompletedProcess[bytes]) -> list[object]:
    assert out.returncode == 0, out.stderr.decode()
    result: list[object] = json.loads(out.stdout)
    return result


# --- directives -------------------------------------------------------------------------------------------


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
        account="ws1",
        work_dir="/home/u/run-1",
        array="0-3%2",
        dependency="afterok:12",
        stdout="logs/%j.out",
        comment="rgpu:0123abcd",
        hold=True,
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
        "#SBATCH --account=ws1",
        "#SBATCH --chdir=/home/u/run-1",
        "#SBATCH --output=logs/%j.out",
        "#SBATCH --array=0-3%2",
        "#SBATCH --dependency=afterok:12",
        "#SBATCH --comment=rgpu:0123abcd",
        "#SBATCH --hold",
    ]
    # what we write, sbatch's parser (ours, checked against sbatch) reads back
    assert script_directives(render(spec))[0] == {
        "job-name": "train",
        "nodes": "2",
        "ntasks-per-node": "1",
        "gres": "gpu:a100:4",
        "cpus-per-task": "8",
        "mem": "65536M",
        "time": "90",
        "partition": "gpu",
        "qos": "high",
        "account": "ws1",
        "chdir": "/home/u/run-1",
        "output": "logs/%j.out",
        "array": "0-3%2",
        "dependency": "afterok:12",
        "comment": "rgpu:0123abcd",
        "hold": None,
    }


@pytest.mark.parametrize(
    ("fields", "lines"),
    [
        ({"get_user_env": ""}, ["#SBATCH --get-user-env"]),
        ({"get_user_env": "60L"}, ["#SBATCH --get-user-env=60L"]),
        ({"mem_mib": 0}, ["#SBATCH --mem=0"]),
    ],
)
def test_get_user_env_and_mem_0_are_written_as_sbatch_reads_them(fields: dict[str, object], lines: list[str]) -> None:
    assert directives(JobSpec(name="j", command=["true"], **fields))[1:] == lines  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["60 L", "L60", "x", "60L\n#SBATCH --uid=0"])
def test_get_user_env_values_are_allow_listed(value: str) -> None:
    with pytest.raises(ScriptError, match="get_user_env"):
        render(JobSpec(name="j", command=["true"], get_user_env=value))


def test_minimal_script_has_only_a_name() -> None:
    text = render(JobSpec(name="j", command=["true"]))
    assert [line for line in text.splitlines() if line.startswith("#SBATCH")] == ["#SBATCH --job-name=j"]
    assert text.startswith("#!/bin/bash\n") and text.endswith("set +e\ntrue\n")


# --- the body, run with bash ----------------------------------------------------------------------------


def test_layout_without_gemini(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    data.mkdir()
    (data / "hello.txt").write_text("hi")
    spec = JobSpec(
        name="j",
        datasets=[str(data)],
        models=[str(tmp_path)],
        command=[
            "bash",
            "-c",
            'cat "$GEMINI_DATA_IN1/hello.txt"; echo " $GEMINI_PRETRAIN $GEMINI_DATA_OUT $GEMINI_CODE"',
        ],
    )
    out = run_body(spec, tmp_path)
    assert out.returncode == 0, out.stderr
    root = tmp_path / ".gemini" / "42"  # the job's own layout (SLURM_JOB_ID)
    assert out.stdout.decode().strip() == f"hi {root}/pretrain {root}/output {root}/code"
    assert (root / "output").is_dir() and (root / "code").is_dir() and (root / "data-1").readlink() == data


def test_layout_in_an_existing_writable_gemini(tmp_path: Path) -> None:
    gemini, out_dir = tmp_path / "gemini-root", tmp_path / "out"
    gemini.mkdir()
    out_dir.mkdir()
    spec = JobSpec(
        name="j",
        output_dir=str(out_dir),
        code_dir=str(tmp_path),
        models=["/m1", "/m2", "/m3"],
        command=["bash", "-c", 'echo "$GEMINI_DATA_OUT $GEMINI_CODE $GEMINI_PRETRAIN3 ${GEMINI_DATA_IN1-unset}"'],
    )
    out = run_body(spec, tmp_path, gemini_root=str(gemini))
    job = gemini / ".jobs" / "42"  # the job's own layout (SLURM_JOB_ID)
    assert out.stdout.decode().split() == [f"{job}/output", f"{job}/code", f"{job}/pretrain3", "unset"]
    assert (job / "output").readlink() == out_dir and (job / "pretrain3").readlink() == Path("/m3")
    assert not (tmp_path / ".gemini").exists()


def test_exit_code_is_the_commands(tmp_path: Path) -> None:
    assert run_body(JobSpec(name="j", command=["bash", "-c", "exit 7"]), tmp_path).returncode == 7


def test_the_users_path_cannot_break_the_layout(tmp_path: Path) -> None:
    spec = JobSpec(name="j", command=["/bin/echo", "ok"], env={"PATH": "/nonexistent"})
    out = run_body(spec, tmp_path)
    assert (out.returncode, out.stdout) == (0, b"ok\n"), out.stderr


def test_user_scripts_are_embedded_verbatim(tmp_path: Path) -> None:
    text = "echo one\ncat <<'EOF'\n$(not run) `nor this`\nEOF\necho \"$0\" >/dev/null\n"
    out = run_body(JobSpec(name="j", script=text), tmp_path)
    assert out.stdout == b"one\n$(not run) `nor this`\n", out.stderr


def test_a_scripts_own_interpreter_is_used_and_its_file_removed(tmp_path: Path) -> None:
    text = "#!/usr/bin/env python3\nimport sys\nprint(sys.argv[1:])\nprint(sys.argv[0])\n"
    out = run_body(JobSpec(name="j", script=text, script_args=["a b", "$HOME"]), tmp_path)
    args, path = out.stdout.decode().splitlines()
    assert args == "['a b', '$HOME']", out.stderr
    assert path.startswith("/") and not Path(path).exists()


# --- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": "x;y"}, "name"),
        ({"name": "a#b"}, "name"),
        ({"partition": "gpu\n#SBATCH --uid=0"}, "partition"),
        ({"qos": "q o s"}, "qos"),
        ({"account": "ws1 --uid=0"}, "account"),
        ({"account": "ws1\n"}, "account"),  # re's $ matches before a final newline: allow-lists use fullmatch
        ({"comment": "rgpu:1 #x"}, "comment"),
        ({"comment": "a\nb"}, "comment"),
        ({"env": {"1BAD": "x"}}, "env.1BAD"),
        ({"env": {"BAD-NAME": "x"}}, "env.BAD-NAME"),
        ({"env": {"A\nB": "x"}}, "env"),
        ({"env": {"A\n": "x"}}, "env"),
        ({"env": {"SLURM_JOB_ID": "1"}}, "env.SLURM_JOB_ID"),
        ({"env": {"GEMINI_CODE": "/x"}}, "env.GEMINI_CODE"),
        ({"env": {"MASTER_PORT": "1"}}, "env.MASTER_PORT"),
        ({"env": {"A": "nul\x00"}}, "env.A"),
        ({"datasets": ["/a", "/b", "/c", "/d"]}, "datasets"),
        ({"datasets": ["relative/path"]}, "datasets[0]"),
        ({"models": ["/data/../etc"]}, "models[0]"),
        ({"models": ["/ok", "/x\x00y"]}, "models[1]"),
        ({"code_dir": "/a//b"}, "code_dir"),
        ({"code_dir": "/a/./b"}, "code_dir"),
        ({"output_dir": "/out\nx"}, "output_dir"),
        ({"work_dir": "/home/with space"}, "work_dir"),
        ({"work_dir": "home"}, "work_dir"),
        ({"stdout": "../../etc/passwd"}, "stdout"),
        ({"stderr": "err #1.txt"}, "stderr"),
        ({"array": "1-3; rm"}, "array"),
        ({"dependency": "afterok:1 --uid=0"}, "dependency"),
        ({"gpu_type": "A100 "}, "gpu_type"),
        ({"image": "$(evil)"}, "image"),
        ({"command": []}, "command"),
        ({"command": None}, "command"),
        ({"command": ["a\x00"]}, "command"),
        ({"script": "true"}, "command"),
        ({"script_args": ["x"]}, "script_args"),
        ({"nproc_per_node": 2}, "nproc_per_node"),
        ({"command": None, "script": "echo", "launch": "torchrun"}, "launch"),
        ({"mem_mib": 1, "mem_per_cpu_mib": 1}, "mem_per_cpu_mib"),
        ({"nodes": 0}, "nodes"),
        ({"mem_mib": 2**32}, "mem_mib"),
        ({"time_minutes": 0}, "time_minutes"),
        ({"master_port": 80}, "master_port"),
        ({"name": 7}, "name"),
    ],
)
def test_refusals_name_the_field(changes: dict[str, object], field: str) -> None:
    base = {"name": "ok", "command": ["true"]}
    with pytest.raises(ScriptError) as err:
        render(JobSpec(**{**base, **changes}))  # type: ignore[arg-type]
    assert err.value.field == field


def test_large_jobs_render() -> None:
    spec = JobSpec(name="big", command=["x"], mem_mib=2 * 1024 * 1024, time_minutes=30 * 1440, nodes=512)
    assert "#SBATCH --mem=2097152M" in render(spec) and "#SBATCH --time=43200" in render(spec)


# --- containers and torchrun, through the fakes ------------------------------------------------------


def test_images_need_a_runtime() -> None:
    spec = JobSpec(name="j", command=["python", "x.py"], image="nvcr.io/nvidia/pytorch:24.01-py3")
    with pytest.raises(ScriptError, match="container runtime") as err:
        render(spec)
    assert err.value.field == "image"
    pyxis = render(spec, container_runtime="pyxis")
    assert "srun --nodes=1 --ntasks=1 --container-image=nvcr.io/nvidia/pytorch:24.01-py3 --container-mounts=" in pyxis
    apptainer = render(spec, container_runtime="apptainer")
    assert (
        "\napptainer exec --nv --bind " in apptainer and "nvcr.io/nvidia/pytorch:24.01-py3 env GEMINI_CODE" in apptainer
    )


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_containers_see_each_slot_at_gemini(tmp_path: Path, fake_bin: Path, runtime: str) -> None:
    data = tmp_path / "data set"
    data.mkdir()
    spec = JobSpec(
        name="j",
        datasets=[str(data)],
        image="docker://pytorch/pytorch:2.3",
        command=["bash", "-c", 'echo "$GEMINI_DATA_IN1 $GEMINI_CODE $GEMINI_DATA_OUT" "$@"', "-", "a b"],
    )
    out = run_body(spec, tmp_path, fake_bin=fake_bin, runtime=runtime)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"/gemini/data-1 /gemini/code /gemini/output a b\n"
    if runtime == "apptainer":
        binds = (tmp_path / "log" / "binds").read_text().splitlines()
        assert f"{tmp_path}/.gemini/42/data-1:/gemini/data-1:ro" in binds and len(binds) == 3
        assert (tmp_path / "log" / "image").read_text() == "docker://pytorch/pytorch:2.3\n"


def test_a_script_runs_in_a_container_from_a_bound_file(tmp_path: Path, fake_bin: Path) -> None:
    spec = JobSpec(name="j", script="echo in-container", image="img")
    out = run_body(spec, tmp_path, fake_bin=fake_bin, runtime="apptainer")
    assert out.returncode == 127  # the fake cannot make /gemini/.job-script appear ...
    binds = (tmp_path / "log" / "binds").read_text().splitlines()
    assert any(b.endswith(":/gemini/.job-script:ro") for b in binds)  # ... but it was bound there, from a real file


def test_a_working_directory_that_cannot_be_bound_is_refused_at_run_time(tmp_path: Path, fake_bin: Path) -> None:
    cwd = tmp_path / "a,b"
    cwd.mkdir()
    out = run_body(JobSpec(name="j", command=["true"], image="img"), cwd, fake_bin=fake_bin, runtime="pyxis")
    assert out.returncode == 2 and b"cannot bind" in out.stderr


@pytest.mark.parametrize("runtime", [None, "pyxis", "apptainer"])
def test_torchrun_launch(tmp_path: Path, fake_bin: Path, runtime: str | None) -> None:
    args = ["--lr", "0.1 two words", "$(id)", "`id`", "'\"", ";exit 3", "ünï\ncode"]
    spec = JobSpec(
        name="ddp",
        command=[sys.executable, "-c", PROBE, *args],
        nodes=2,
        gpus_per_node=2,
        launch="torchrun",
        master_port=29600,
        env={"ALPHA": "a'b"},
        image="img" if runtime else None,
    )
    got_args, got_env, _ = probe_output(run_body(spec, tmp_path, fake_bin=fake_bin, runtime=runtime))
    assert got_args == args and got_env == {"ALPHA": "a'b", "beta_2": None, "X": None}
    log = tmp_path / "log"
    assert "--ntasks-per-node=1" in (log / "srun").read_text().splitlines()
    assert (log / "torchrun").read_text().splitlines() == [
        "--nnodes=2",
        "--nproc_per_node=2",
        "--node_rank=0",
        "--master_addr=n1",
        "--master_port=29600",
    ]


# --- properties ---------------------------------------------------------------------------------------------

HOSTILE = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
# A path segment: anything a path may hold here but '/' and control characters (refused by check_path).
SEGMENT = st.text(
    st.characters(codec="utf-8", min_codepoint=0x20, exclude_characters="/\x7f"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
PATHS = st.lists(SEGMENT, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(args=st.lists(HOSTILE, max_size=5), values=st.lists(HOSTILE, min_size=3, max_size=3), dataset=PATHS)
def test_hostile_arguments_env_values_and_paths_arrive_byte_for_byte(
    tmp_path: Path, args: list[str], values: list[str], dataset: str
) -> None:
    env = dict(zip(KEYS, values, strict=True))
    spec = JobSpec(name="probe", command=[sys.executable, "-c", PROBE, *args], env=env, datasets=[dataset])
    got_args, got_env, link = probe_output(run_body(spec, tmp_path))
    assert (got_args, got_env, link) == (args, env, dataset)


@PROPERTY
@given(args=st.lists(HOSTILE, max_size=4), text=HOSTILE)
def test_hostile_scripts_and_script_arguments_arrive_byte_for_byte(tmp_path: Path, args: list[str], text: str) -> None:
    # The script prints its arguments NUL-separated, then the rest of its own file: the hostile text, which
    # must have been embedded verbatim (it is never run: `exit` comes first).
    prefix = '#!/bin/bash\nfor a in "$@"; do printf \'%s\\0\' "$a"; done\ntail -n +5 "$0"\nexit\n'
    out = run_body(JobSpec(name="j", script=prefix + text, script_args=args), tmp_path)
    assert out.returncode == 0, out.stderr.decode()
    body = text.rstrip("\n")
    assert out.stdout == b"".join(a.encode() + b"\0" for a in args) + (body.encode() + b"\n" if body else b"")


FIELDS = {
    "name": "job-name",
    "partition": "partition",
    "qos": "qos",
    "account": "account",
    "stdout": "output",
    "stderr": "error",
    "work_dir": "chdir",
    "array": "array",
    "dependency": "dependency",
}
SAFE = st.from_regex(r"[A-Za-z0-9_.+/%:-]{0,12}", fullmatch=True)
# Mostly what an allow-list lets through, with one character that could end or bend a directive.
ONE_BAD_CHAR = st.builds(
    lambda a, bad, b: a + bad + b, SAFE, st.sampled_from(list("\t\n\r\x0b\x0c #'\"\\$;`=,@()*?&|<>~\x85\u2028")), SAFE
)
TRAILING = st.builds(lambda a, end: a + end, SAFE.filter(bool), st.sampled_from(["\n", "\r\n", " ", "\t", "#"]))
NAMEISH = st.one_of(HOSTILE, SAFE.filter(bool), ONE_BAD_CHAR, TRAILING)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(FIELDS)), value=NAMEISH)
@example(field="account", value="ws1\n")
@example(field="partition", value="gpu\n#SBATCH --uid=0")
@example(field="name", value="a#b")
@example(field="work_dir", value="/home/a b")
def test_no_value_can_add_or_bend_a_directive(field: str, value: str) -> None:
    """A value is refused (naming its field), or sbatch's parser reads back exactly it and nothing more."""
    spec = JobSpec(**{"name": "ok", "command": ["true"], field: value})  # type: ignore[arg-type]
    try:
        text = render(spec)
    except ScriptError as err:
        assert err.field == field
        return
    expected: Options = {"job-name": "ok", FIELDS[field]: value}
    assert script_directives(text) == (expected, [])


def test_the_environment_of_the_test_runner_does_not_leak_in(tmp_path: Path) -> None:
    os.environ["ALPHA"] = "from-the-runner"
    try:
        _, got_env, _ = probe_output(run_body(JobSpec(name="j", command=[sys.executable, "-c", PROBE]), tmp_path))
    finally:
        del os.environ["ALPHA"]
    assert got_env == {"ALPHA": None, "beta_2": None, "X": None}


@pytest.mark.parametrize(("nodes", "stager_exit"), [("1", 0), ("2", 0), ("2", 3)])
def test_every_node_gets_its_layout_and_stage_in_before_the_program(
    tmp_path: Path, fake_bin: Path, nodes: str, stager_exit: int
) -> None:
    """A node-local /gemini exists only where it was made: on a job of several nodes the layout and the stage-in
    run through one srun task per node; a failed stage-in ends the job with 75 before the program."""
    stager = tmp_path / "stage-in"
    stager.write_text(
        '#!/bin/bash\nwhile [ "$1" != --dest ]; do shift; done\nmkdir -p "$2" && echo staged > "$2/file"\n'
        f"exit {stager_exit}\n"
    )
    stager.chmod(0o755)
    spec = JobSpec(
        name="j",
        datasets=["imagenet:1"],
        command=["bash", "-c", 'echo ran; cat "$GEMINI_DATA_IN1/file"'],
        stage_in=[StageIn(slot="data-1", reference="imagenet:1", version_id=1)],
    )
    script = tmp_path / "job.sh"
    program = StageInProgram(str(stager), "http://gw")
    script.write_text(render(spec, sbatch_lines=False, gemini_root=str(tmp_path / "none"), stage_in=program))
    log = tmp_path / "log"
    log.mkdir()
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "FAKE_LOG": str(log), "SLURM_JOB_NUM_NODES": nodes}
    out = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, env=env, check=False, timeout=30)
    srun = (log / "srun").read_text().split() if (log / "srun").exists() else []
    if nodes == "1":
        assert srun == []  # in the batch script itself
    else:
        assert srun == ["--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if stager_exit:
        assert out.returncode == 75 and b"ran" not in out.stdout, out
        assert b"could not fetch imagenet:1 into /gemini/data-1" in out.stderr
    else:
        assert out.returncode == 0 and out.stdout == b"ran\nstaged\n", out
