from __future__ import annotations

import pytest

from gateway.client.sbatch import job_request
from slurm.directives import DirectiveError, minutes, parse

SCRIPT = """#!/bin/bash
# a comment
#SBATCH -J train --nodes=2
#SBATCH --gres=gpu:a100:2 -c 4
#SBATCH --mem=16G   # trailing comment
#SBATCH -t 1-02:30:00 -p gpu
#SBATCH --dataset=/data/imagenet
echo start
#SBATCH --qos=ignored-after-first-command
"""


def test_directives_stop_at_the_first_command_and_the_command_line_wins() -> None:
    options, args = parse(SCRIPT, ["-N", "1", "--time=10", "--dataset", "/data/coco", "arg1", "--not-an-option"])
    assert options["job-name"] == "train" and options["nodes"] == "1" and options["time"] == "10"
    assert options["gres"] == "gpu:a100:2" and options["cpus-per-task"] == "4" and options["mem"] == "16G"
    assert "qos" not in options
    assert options["dataset"] == ["/data/coco"]
    assert args == ["arg1", "--not-an-option"]


def test_unsupported_options_are_listed_together() -> None:
    with pytest.raises(DirectiveError) as err:
        parse("#!/bin/bash\n#SBATCH --mail-user=x --exclusive\n", ["--uid=0", "-N2"])
    assert err.value.unsupported == ["--exclusive", "--mail-user", "--uid"]


@pytest.mark.parametrize(
    ("text", "expected"), [("30", 30), ("30:10", 31), ("2:00:00", 120), ("1-0", 1440), ("1-2:30", 1590), ("0-0:0:1", 1)]
)
def test_time_formats(text: str, expected: int) -> None:
    assert minutes(text) == expected


def test_job_request_mapping() -> None:
    ws, body = job_request(
        "/home/a/train.sh",
        SCRIPT,
        ["--workspace", "lab", "-H", "--export=ALL,LR=0.1,HOME", "-o", "out-%j.txt", "x"],
        cwd="/home/a",
        environ={"HOME": "/home/a"},
    )
    assert ws == "lab"
    assert body["name"] == "train" and body["nodes"] == 2 and body["gpus_per_node"] == 2 and body["gpu_type"] == "a100"
    assert body["cpus_per_task"] == 4 and body["mem_mib"] == 16384 and body["time_minutes"] == 1590
    assert body["partition"] == "gpu" and body["hold"] is True and body["stdout"] == "out-%j.txt"
    assert body["env"] == {"LR": "0.1", "HOME": "/home/a"} and body["script_args"] == ["x"]
    assert body["work_dir"] == "/home/a" and body["datasets"] == ["/data/imagenet"] and body["script"] == SCRIPT


def test_total_gpus_are_spread_over_nodes() -> None:
    _, body = job_request("j.sh", "#!/bin/bash\n", ["-N", "2", "--gpus=a100:4"], cwd="/", environ={})
    assert (body["gpus_per_node"], body["gpu_type"]) == (2, "a100")
    with pytest.raises(DirectiveError):
        job_request("j.sh", "#!/bin/bash\n", ["-N", "3", "--gpus=4"], cwd="/", environ={})
