"""``remotegpu submit``'s mapping of sbatch options to the jobs API body (gateway/client/sbatch.py)."""

from __future__ import annotations

import pytest

from gateway.client.sbatch import job_request
from slurm.directives import DirectiveError
from tests.unit.slurm.test_directives import SCRIPT


def test_job_request_mapping() -> None:
    request = job_request(
        "/home/a/train.sh",
        SCRIPT,
        ["--workspace", "lab", "-H", "--export=ALL,LR=0.1,HOME", "-o", "out-%j.txt", "x"],
        cwd="/home/a",
        environ={"HOME": "/home/a"},
    )
    assert (request.workspace, request.account) == ("lab", None)
    body = request.body
    assert body["name"] == "train" and body["nodes"] == 2 and body["gpus_per_node"] == 2 and body["gpu_type"] == "a100"
    assert body["cpus_per_task"] == 4 and body["mem_mib"] == 16384 and body["time_minutes"] == 1590
    assert body["partition"] == "gpu" and body["hold"] is True and body["stdout"] == "out-%j.txt"
    assert body["environment"]["HOME"] == "/home/a" and body["export"] == "ALL,LR=0.1,HOME"
    assert body["script_args"] == ["x"]
    assert body["work_dir"] == "/home/a" and body["datasets"] == ["/data/imagenet"] and body["script"] == SCRIPT


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--gres=gpu:1"], {"gpus_per_node": 1}),  # one untyped GPU, not a GPU of type "1"
        (["--gres=gpu"], {"gpus_per_node": 1}),
        (["--gres=gpu:a100"], {"gpus_per_node": 1, "gpu_type": "a100"}),
        (["--gres=gpu:a100:2,nvme:1"], {"gpus_per_node": 2, "gpu_type": "a100", "gres": ["nvme:1"]}),
        (["--gpus-per-node=a100:2"], {"gpus_per_node": 2, "gpu_type": "a100"}),
        (["-N", "2", "--gpus=a100:3"], {"nodes": 2, "gpus": 3, "gpu_type": "a100"}),  # per job, not per node
        (["-n", "2", "--gpus-per-task=1"], {"ntasks": 2, "gpus_per_task": 1}),
        (["-G1", "--mem-per-gpu=2G", "--cpus-per-gpu=4"], {"gpus": 1, "mem_per_gpu_mib": 2048, "cpus_per_gpu": 4}),
        (["-G2", "--ntasks-per-gpu=1", "--gpu-bind=closest"], {"gpus": 2, "ntasks_per_gpu": 1, "gpu_bind": "closest"}),
        (["-N", "1-3"], {"nodes": 1, "max_nodes": 3}),
        (["-N", "2-2"], {"nodes": 2}),
    ],
)
def test_gpu_forms_are_kept_as_written(argv: list[str], expected: dict[str, object]) -> None:
    body = job_request("j.sh", "#!/bin/bash\n", argv, cwd="/", environ={}).body
    gpu_fields = {"nodes", "max_nodes", "gpus", "gpus_per_node", "gpus_per_task", "gpu_type", "gres", "ntasks"}
    gpu_fields |= {"mem_per_gpu_mib", "cpus_per_gpu", "ntasks_per_gpu", "gpu_bind"}
    assert {k: v for k, v in body.items() if k in gpu_fields} == expected


def test_daily_options_pass_through() -> None:
    argv = [
        "--mail-type=end,FAIL", "--mail-user=a@example.org", "--exclusive", "-C", "a100&ib",
        "--signal=B:USR1@60", "--no-requeue", "--open-mode=append", "-w", "n1", "-x", "n2", "--begin=now+1hour",
        "--time-min=30", "--reservation=maint", "--nice", "--comment=run-7", "--wckey=proj", "-m", "block:cyclic",
        "-L", "matlab:1", "--deadline=now+2days", "--kill-on-invalid-dep=yes",
    ]  # fmt: skip
    body = job_request("j.sh", "#!/bin/bash\n", argv, cwd="/", environ={}).body
    assert body["mail_type"] == ["END", "FAIL"] and body["mail_user"] == "a@example.org"
    assert body["exclusive"] == "node" and body["constraint"] == "a100&ib" and body["signal"] == "B:USR1@60"
    assert body["requeue"] is False and body["open_mode"] == "append"
    assert (body["nodelist"], body["exclude"], body["begin"], body["time_min_minutes"]) == ("n1", "n2", "now+1hour", 30)
    assert (body["reservation"], body["nice"], body["comment"], body["wckey"]) == ("maint", 100, "run-7", "proj")
    assert (body["distribution"], body["licenses"], body["deadline"]) == ("block:cyclic", "matlab:1", "now+2days")
    assert body["kill_on_invalid_dep"] is True
    assert job_request("j.sh", "#!/bin/bash\n", ["--exclusive=user"], cwd="/", environ={}).body["exclusive"] == "user"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--gres=gpu:a100:2:3"], "gpu\\[:type\\]\\[:count\\]"),
        (["--gres=gpu:1,gpu:2"], "give the GPUs once"),
        (["--gpus=a100:1", "--gpus-per-node=v100:1"], "more than one type"),
        (["-N", "x"], "--nodes=x"),
        (["--kill-on-invalid-dep=maybe"], "yes or no"),
    ],
)
def test_bad_gpu_and_option_values_name_the_option(argv: list[str], error: str) -> None:
    with pytest.raises(DirectiveError, match=error):
        job_request("j.sh", "#!/bin/bash\n", argv, cwd="/", environ={})


def test_account_names_the_workspace_by_its_slurm_account() -> None:
    request = job_request("j.sh", "#!/bin/bash\n#SBATCH -A vision_lab\n", [], cwd="/", environ={})
    assert (request.workspace, request.account) == (None, "vision_lab")
    assert "account" not in request.body
    assert job_request("j.sh", "#!/bin/bash\n#SBATCH -A a\n", ["--account=b"], cwd="/", environ={}).account == "b"


@pytest.mark.parametrize(
    ("argv", "error"), [(["--mem-per-cpu=0"], "--mem-per-cpu=0"), (["--mem-per-cpu=lots"], "--mem-per-cpu=lots")]
)
def test_bad_memory_names_the_option(argv: list[str], error: str) -> None:
    with pytest.raises(DirectiveError, match=error):
        job_request("j.sh", "#!/bin/bash\n", argv, cwd="/", environ={})


@pytest.mark.parametrize(("value", "mib"), [("7GB", 7168), ("1000mb", 1000), ("7Gb", 7168), ("2g", 2048), ("512", 512)])
def test_memory_sizes_as_sbatch_takes_them(value: str, mib: int) -> None:
    assert job_request("j.sh", "#!/bin/bash\n", [f"--mem={value}"], cwd="/", environ={}).body["mem_mib"] == mib


def test_all_of_a_nodes_memory_is_mem_0() -> None:
    assert job_request("j.sh", "#!/bin/bash\n#SBATCH --mem=0\n", [], cwd="/", environ={}).body["mem_mib"] == 0


@pytest.mark.parametrize(
    ("script", "argv", "value"),
    [("#SBATCH --get-user-env\n", [], ""), ("", ["--get-user-env=60L"], "60L"), ("", [], None)],
)
def test_get_user_env_passes_through(script: str, argv: list[str], value: str | None) -> None:
    body = job_request("j.sh", f"#!/bin/bash\n{script}", argv, cwd="/", environ={}).body
    assert body.get("get_user_env") == value
