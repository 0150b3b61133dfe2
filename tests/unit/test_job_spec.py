"""One job spec from the request body to sbatch: JobCreate and slurm.script.JobSpec are pinned together, and
every field of a request reaches what is submitted (the rendered script or the Submission)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from gateway.client.sbatch import job_request
from gateway.jobs.origin import Origin, parse_comment
from gateway.jobs.schemas import JobCreate, job_spec, stored_spec
from gateway.jobs.service import _submission
from slurm.client import Submission
from slurm.script import JobSpec, ScriptError, render

pytestmark = pytest.mark.unit

SPEC_ONLY = {"account", "stage_in"}
"""JobSpec's fields a request cannot set: the gateway gives sbatch the workspace's account, and resolves the
dataset references among the mounts."""

BASE: dict[str, Any] = {"name": "j", "script": "#!/bin/bash\ntrue\n"}
# field -> (a value, other fields it needs, compared without it; a field of BASE is compared with BASE's value)
SAMPLES: dict[str, tuple[Any, dict[str, Any]]] = {
    "name": ("other", {}),
    "command": (["python3", "x.py"], {"script": None, "command": ["true"]}),
    "script": ("#!/bin/bash\necho hi\n", {}),
    "script_args": (["--epochs", "3"], {}),
    "nodes": (2, {}),
    "max_nodes": (3, {"nodes": 2}),
    "ntasks": (4, {}),
    "ntasks_per_node": (2, {}),
    "ntasks_per_socket": (2, {}),
    "mincpus": (2, {}),
    "gpus_per_node": (2, {}),
    "gpu_type": ("a100", {"gpus_per_node": 1}),
    "gpus_per_node_option": ("gpus-per-node", {"gpus_per_node": 1}),
    "gpus": (3, {}),
    "gpus_per_task": (1, {"ntasks": 2}),
    "cpus_per_gpu": (4, {"gpus": 1}),
    "mem_per_gpu_mib": (1024, {"gpus": 1}),
    "ntasks_per_gpu": (2, {"gpus": 1}),
    "gpu_bind": ("closest", {"gpus": 1}),
    "gres": (["nvme:1"], {}),
    "cpus_per_task": (2, {}),
    "mem_mib": (512, {}),
    "mem_per_cpu_mib": (256, {}),
    "time_minutes": (30, {}),
    "partition": ("debug", {}),
    "qos": ("normal", {}),
    "env": ({"SEED": "1"}, {}),
    "environment": ({"FOO": "bar"}, {}),
    "export": ("NONE", {}),
    "datasets": (["/data/a"], {}),
    "models": (["/models/m"], {}),
    "code_dir": ("/code", {}),
    "output_dir": ("/out", {}),
    "work_dir": ("/elsewhere", {}),
    "stdout": ("o-%j.txt", {}),
    "stderr": ("e-%j.txt", {}),
    "array": ("0-3", {}),
    "dependency": ("afterok:12", {}),
    "hold": (True, {}),
    "image": ("nvcr.io/nvidia/pytorch:24.01-py3", {}),
    "launch": ("torchrun", {"script": None, "command": ["train.py"]}),
    "nproc_per_node": (2, {"script": None, "command": ["train.py"], "launch": "torchrun"}),
    "master_port": (29600, {"script": None, "command": ["train.py"], "launch": "torchrun"}),
    "comment": ("run-7", {}),
    "mail_type": (["END", "FAIL"], {}),
    "mail_user": ("a@example.org", {}),
    "exclusive": ("node", {}),
    "constraint": ("a100&ib", {}),
    "signal": ("B:USR1@60", {}),
    "requeue": (False, {}),
    "open_mode": ("append", {}),
    "nodelist": ("n1", {}),
    "exclude": ("n2", {}),
    "begin": ("now+1hour", {}),
    "deadline": ("now+1day", {}),
    "time_min_minutes": (10, {}),
    "reservation": ("maint", {}),
    "nice": (10, {}),
    "wckey": ("proj", {}),
    "distribution": ("block:cyclic", {}),
    "licenses": ("matlab:1", {}),
    "kill_on_invalid_dep": (True, {}),
    "get_user_env": ("", {}),
}


def _fields(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """Each field's default (a factory's product for mutable ones)."""
    return {
        f.name: f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
        for f in msgspec.structs.fields(struct)
    }


def test_the_request_and_the_spec_are_one_type() -> None:
    request, spec = _fields(JobCreate), _fields(JobSpec)
    assert set(spec) - set(request) == SPEC_ONLY
    assert set(request) <= set(spec)
    assert {name: spec[name] for name in request if name != "name"} == {
        name: value for name, value in request.items() if name != "name"
    }


def _submitted(fields: dict[str, Any]) -> tuple[str, Submission]:
    """What a request becomes: the rendered script and the Submission (as JobService.submit makes them)."""
    data = msgspec.convert(fields, JobCreate)
    spec = job_spec(data, data.work_dir or "/home/u")
    script = render(spec, container_runtime="pyxis")
    row = SimpleNamespace(id="job1", spec=msgspec.to_builtins(spec), script=script, work_dir=spec.work_dir)
    assert stored_spec(row.spec) == spec  # read back typed, as it was
    return script, _submission("inst", row, "u", "acct")


@pytest.mark.parametrize("field", sorted(_fields(JobCreate)))
def test_every_request_field_reaches_what_is_submitted(field: str) -> None:
    assert field in SAMPLES, f"JobCreate.{field} has no sample here: add one (and carry it to sbatch)"
    value, needs = SAMPLES[field]
    without = {k: v for k, v in {**BASE, **needs}.items() if v is not None}  # None in needs: leave it out
    with_it = {**without, field: value}
    assert _submitted(with_it) != _submitted(without), f"{field} changed nothing that reaches sbatch"


def test_an_unknown_field_is_an_error_on_the_way() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({**BASE, "gpu": 1}, JobCreate)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        stored_spec({**BASE, "gpu": 1})


def test_the_users_comment_follows_ours() -> None:
    _, submission = _submitted({**BASE, "comment": "run-7"})
    assert submission.options["comment"] == "rgpu:inst:job1 run-7"
    assert "hold" not in submission.options  # hold has one route: the script's #SBATCH --hold


def test_a_conflict_sbatch_refuses_is_refused_in_its_words() -> None:
    """``--mem`` with ``--mem-per-cpu`` (one in the script, one on the command line), as real sbatch says it."""
    request = job_request("j.sh", "#!/bin/bash\n#SBATCH --mem-per-cpu=300\n", ["--mem=400"], cwd="/", environ={})
    data = msgspec.convert({k: v for k, v in request.body.items() if k != "environment"}, JobCreate)
    with pytest.raises(ScriptError, match="--mem, --mem-per-cpu, and --mem-per-gpu are mutually exclusive"):
        render(job_spec(data, "/tmp"))
    with pytest.raises(ScriptError, match="--gpus-per-task used without either --gpus or -n/--ntasks"):
        render(job_spec(msgspec.convert({**BASE, "gpus_per_task": 1}, JobCreate), "/tmp"))


def test_our_id_is_read_up_to_the_users_comment() -> None:
    assert parse_comment("rgpu:inst:job1 run:7 b") == Origin(instance="inst", job_id="job1")


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "*JOB_NAME*"},
        {"partition": "gpu,debug"},
        {"stdout": "mpi/errors_N_?.txt"},
        {"ntasks_per_node": 2, "gpus_per_task": 1},  # sbatch counts the tasks from --ntasks-per-node
    ],
)
def test_what_real_scripts_carry_is_taken(fields: dict[str, Any]) -> None:
    """Found by the parity corpus: values raw sbatch takes."""
    render(job_spec(msgspec.convert({**BASE, **fields}, JobCreate), "/tmp"))
