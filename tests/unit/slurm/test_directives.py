"""#SBATCH and command-line parsing. Every row of SBATCH_READS was checked against ``sbatch -vv --test-only``."""

from __future__ import annotations

import pytest

from slurm.directives import (
    OPTIONS,
    DirectiveError,
    Options,
    memory,
    minutes,
    parse,
    script_directives,
    split_command_line,
)

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


def directives_of(lines: str) -> Options:
    options, unsupported = script_directives(f"#!/bin/bash\n{lines}\ntrue\n")
    assert unsupported == []
    return options


SBATCH_READS: list[tuple[str, Options]] = [
    ('#SBATCH -J a#b --comment="x y"', {"job-name": "a"}),  # an unquoted '#' ends the line, even inside a word
    ("#SBATCH -J a\\#b -t 3", {"job-name": "a#b", "time": "3"}),
    ("  #SBATCH -N 2", {}),  # not in the first column: a comment
    ("#sbatch -N 2", {}),
    ("#SBATCH --time 5 # c", {"time": "5"}),
    ('#SBATCH --job-name="a b" -t 1:00', {"job-name": "a b", "time": "1:00"}),
    ("#SBATCH --job-name='a\\'b'", {"job-name": "a'b"}),
    ('#SBATCH --job-name=x"y z"w', {"job-name": "xy zw"}),
    ("#SBATCH-N2", {"nodes": "2"}),
    ("#SBATCH\t-N2", {"nodes": "2"}),
    ("#SBATCH -N2 -N3", {"nodes": "3"}),
    ("#SBATCH -Jab -t5", {"job-name": "ab", "time": "5"}),
    ("#SBATCH -HJx --tasks-per=3", {"hold": None, "job-name": "x", "ntasks-per-node": "3"}),
    ("#SBATCH --job=abc -c2 --gpus-per-n=a100:1", {"job-name": "abc", "cpus-per-task": "2", "gpus-per-node": "a100:1"}),
    ('#SBATCH -t 2 "" -J x', {"time": "2"}),  # an empty word ends the line
    ("#SBATCH -t 2 \\  -J x", {"time": "2"}),
    ("\n# comment\n\n#SBATCH -t 9", {"time": "9"}),
    ("#SBATCH -t 1\necho hi\n#SBATCH -t 2", {"time": "1"}),
    (
        "#SBATCH --export=ALL,A=1 -o out-%j.txt --array=0-3%2 -d afterok:1 -A ws1",
        {"export": "ALL,A=1", "output": "out-%j.txt", "array": "0-3%2", "dependency": "afterok:1", "account": "ws1"},
    ),
]


@pytest.mark.parametrize(("lines", "expected"), SBATCH_READS)
def test_directives_read_as_sbatch_reads_them(lines: str, expected: Options) -> None:
    assert directives_of(lines) == expected


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ("#SBATCH foo -N2", "invalid directive in the batch script: 'foo'"),
        ("#SBATCH --job-name=a\\ b", "invalid directive in the batch script: 'b'"),
        ("#SBATCH --job-name=x'y -t 3", "line 2: unmatched '"),
        ("#SBATCH --nodes", "--nodes needs a value"),
        ("#SBATCH --hold=yes", "--hold takes no value"),
    ],
)
def test_directives_sbatch_refuses(lines: str, error: str) -> None:
    with pytest.raises(DirectiveError, match=error):
        script_directives(f"#!/bin/bash\n{lines}\n")


def test_directives_stop_at_the_first_command_and_the_command_line_wins() -> None:
    options, args = parse(SCRIPT, ["-N", "1", "--time=10", "--dataset", "/data/coco", "arg1", "--not-an-option"])
    assert options["job-name"] == "train" and options["nodes"] == "1" and options["time"] == "10"
    assert options["gres"] == "gpu:a100:2" and options["cpus-per-task"] == "4" and options["mem"] == "16G"
    assert "qos" not in options
    assert options["dataset"] == ["/data/coco"]
    assert args == ["arg1", "--not-an-option"]


@pytest.mark.parametrize(
    ("argv", "options", "args"),
    [
        (["-N2", "-n", "4", "x"], {"nodes": "2", "ntasks": "4"}, ["x"]),
        (["--partition", "gpu", "--qos=high", "-A", "ws1"], {"partition": "gpu", "qos": "high", "account": "ws1"}, []),
        (["-H", "--", "-N2"], {"hold": None}, ["-N2"]),
        (
            ["--mem-per-cpu=2G", "-G", "a100:2", "--gpus-per-node", "1"],
            {"mem-per-cpu": "2G", "gpus": "a100:2", "gpus-per-node": "1"},
            [],
        ),
        (["-D", "/w", "-e", "err.txt", "-", "a"], {"chdir": "/w", "error": "err.txt"}, ["-", "a"]),
        (["--dataset=/a", "--dataset", "/b", "--model=/m"], {"dataset": ["/a", "/b"], "model": ["/m"]}, []),
    ],
)
def test_command_lines(argv: list[str], options: Options, args: list[str]) -> None:
    assert parse("#!/bin/bash\n", argv) == (options, args)


def test_unsupported_options_are_listed_together() -> None:
    with pytest.raises(DirectiveError) as err:
        parse("#!/bin/bash\n#SBATCH --mail-user=x --wrap=true\n", ["--uid=0", "-N2"])
    assert err.value.unsupported == ["--uid", "--wrap"]
    assert "--uid (jobs run as the submitting user)" in str(err.value)
    assert "--wrap (give a script)" in str(err.value)


@pytest.mark.parametrize(
    ("script", "argv", "value"),
    [
        ("#SBATCH --get-user-env\n", [], None),
        ("#SBATCH --get-user-env=60L\n", [], "60L"),
        ("", ["--get-user-env=S"], "S"),
        ("#SBATCH --get-user-env=10\n", ["--get-user"], None),  # abbreviated, as sbatch takes it
    ],
)
def test_get_user_env_is_read_with_its_optional_value(script: str, argv: list[str], value: str | None) -> None:
    options, args = parse(f"#!/bin/bash\n{script}", argv)
    assert options == {"get-user-env": value} and args == []


def test_values_of_unsupported_options_are_skipped_so_all_are_listed() -> None:
    script = "#!/bin/bash\n#SBATCH --bb x -t 7 --nod=2\n"
    with pytest.raises(DirectiveError) as err:
        parse(script, ["-F", "n1", "--exclusive", "--frobnicate", "-j", "arg"])
    assert err.value.unsupported == [
        "--bb",
        "--frobnicate",
        "--nod (ambiguous: --nodefile, --nodelist, --nodes)",
        "--nodefile",
        "-j",
    ]


@pytest.mark.parametrize(
    ("script", "argv", "expected"),
    [
        # one request of GPUs per node, however it is spelled: the command line's replaces the script's
        ("#SBATCH --gres=gpu:a100:2\n", ["--gpus-per-node=1"], {"gpus-per-node": "1"}),
        ("#SBATCH --gpus-per-node=2\n", ["--gres=gpu:1"], {"gres": "gpu:1"}),
        ("#SBATCH --gres=gpu:1\n#SBATCH -G 4\n", ["--gres=gpu:2"], {"gres": "gpu:2", "gpus": "4"}),
        ("#SBATCH --requeue\n", ["--no-requeue"], {"no-requeue": None}),
        ("#SBATCH --gres=gpu:1\n", ["-G", "2"], {"gres": "gpu:1", "gpus": "2"}),  # per job is another request
    ],
)
def test_the_command_line_replaces_equivalent_directives(script: str, argv: list[str], expected: Options) -> None:
    assert parse("#!/bin/bash\n" + script, argv) == (expected, [])


def test_every_option_we_support_is_sbatchs_or_ours() -> None:
    ours = {"workspace", "dataset", "model", "image"}
    for name, (short, _) in OPTIONS.items():
        if name not in ours:
            assert parse("#!/bin/bash\n", [f"--{name}=1" if OPTIONS[name][1] else f"--{name}"])[0]
        if short:
            assert name in parse("#!/bin/bash\n", [f"-{short}1" if OPTIONS[name][1] else f"-{short}"])[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", 30),
        ("30:10", 31),
        ("2:00:00", 120),
        ("1-0", 1440),
        ("1-2:30", 1590),
        ("0-0:0:1", 1),
        ("1-02:30:00", 1590),
    ],
)
def test_time_formats(text: str, expected: int) -> None:
    assert minutes(text) == expected


@pytest.mark.parametrize(
    ("text", "error"), [("UNLIMITED", "finite"), ("0", "finite"), ("1:2:3:4", "duration"), ("soon", "duration")]
)
def test_bad_times(text: str, error: str) -> None:
    with pytest.raises(DirectiveError, match=error):
        minutes(text)


def test_memory() -> None:
    assert [memory(v) for v in ("512", "16G", "1T", "100K", "0")] == [512, 16384, 1048576, 1, 0]  # 0: all of a node's
    for bad, error in (("0", "is not supported"), ("lots", "memory size")):
        with pytest.raises(DirectiveError, match=error):
            memory(bad, "mem-per-cpu")


@pytest.mark.parametrize(
    ("argv", "split"),
    [
        (["-N", "2", "job.sh", "--epochs", "3"], (["-N", "2"], "job.sh", ["--epochs", "3"])),
        (["--time", "10", "-pgpu", "job.sh"], (["--time", "10", "-pgpu"], "job.sh", [])),
        (["--mail-type", "ALL", "job.sh", "x"], (["--mail-type", "ALL"], "job.sh", ["x"])),  # unsupported, valued
        (["-H", "--", "-odd-name.sh", "-v"], (["-H"], "-odd-name.sh", ["-v"])),
        (["-N", "2"], (["-N", "2"], None, [])),
    ],
)
def test_split_command_line_finds_the_script_as_sbatch_does(
    argv: list[str], split: tuple[list[str], str | None, list[str]]
) -> None:
    assert split_command_line(argv) == split
    options, _, args = split
    if split[1] is not None and "--mail-type" not in options:
        assert parse("#!/bin/bash\n", [*options, "--", *args])[1] == args  # what the CLI hands on
