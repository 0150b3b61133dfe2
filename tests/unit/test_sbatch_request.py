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


def test_total_gpus_are_spread_over_nodes() -> None:
    body = job_request("j.sh", "#!/bin/bash\n", ["-N", "2", "--gpus=a100:4"], cwd="/", environ={}).body
    assert (body["gpus_per_node"], body["gpu_type"]) == (2, "a100")
    with pytest.raises(DirectiveError):
        job_request("j.sh", "#!/bin/bash\n", ["-N", "3", "--gpus=4"], cwd="/", environ={})


def test_account_names_the_workspace_by_its_slurm_account() -> None:
    request = job_request("j.sh", "#!/bin/bash\n#SBATCH -A vision_lab\n", [], cwd="/", environ={})
    assert (request.workspace, request.account) == (None, "vision_lab")
    assert "account" not in request.body
    assert job_request("j.sh", "#!/bin/bash\n#SBATCH -A a\n", ["--account=b"], cwd="/", environ={}).account == "b"


@pytest.mark.parametrize(("argv", "error"), [(["--mem=0"], "--mem=0"), (["--mem-per-cpu=lots"], "--mem-per-cpu=lots")])
def test_bad_memory_names_the_option(argv: list[str], error: str) -> None:
    with pytest.raises(DirectiveError, match=error):
        job_request("j.sh", "#!/bin/bash\n", argv, cwd="/", environ={})
