"""``remotegpu env`` and ``remotegpu ssh-key`` without a gateway: options into the request body (checked against
the API's own schema), the tables, the ssh command line, what ``--wait`` makes of each view, finding one by name."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.client.api import ApiError
from gateway.client.env_commands import (
    ENV_HEADERS,
    Waiter,
    _EnvVar,
    _Gpus,
    _MemoryMib,
    _Minutes,
    age,
    create_body,
    env_rows,
    event_rows,
    not_reachable,
    pick,
    port_rows,
    public_key_line,
    render_table,
    show_lines,
    ssh_argv,
    ssh_key_rows,
)
from gateway.environments.schemas import (
    EnvironmentCreate,
    EnvironmentEventOut,
    EnvironmentOut,
    EnvironmentSpec,
    PortMappingOut,
    SessionOut,
    SshAccess,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ENV_ID = "0123456789abcdef0123456789abcdef"


def view(state: str = "running", *, ssh: bool = True, number: int = 1, reason: str | None = None, **spec: Any) -> Any:
    """An environment as the gateway writes it (EnvironmentOut through JSON), for the CLI to read."""
    session = SessionOut(
        job_id="f" * 32,
        number=number,
        slurm_job_id=41 + number,
        slurm_state="RUNNING" if state == "running" else "PENDING",
        node="node1" if state in ("running", "starting") else None,
        host="10.0.0.7" if state == "running" else None,
        hub=False,
        started_at=NOW - timedelta(minutes=5),
        ended_at=None,
        reported_at=NOW,
    )
    access = SshAccess(
        host="gw.example.org",
        port=30001,
        user="alice",
        command="ssh -p 30001 alice@gw.example.org",
        config="Host dev\n  HostName gw.example.org\n  Port 30001\n  User alice\n",
    )
    out = EnvironmentOut(
        id=ENV_ID,
        name="dev",
        description="",
        user="alice",
        state=state,  # type: ignore[arg-type]
        reason=reason,
        spec=msgspec.convert(spec, EnvironmentSpec),
        starts=number,
        session=session if number else None,
        ssh=access if ssh else None,
        tensorboard_url=None,
        jupyterlab_url=None,
        created_at=NOW - timedelta(hours=3),
        updated_at=NOW,
    )
    return msgspec.json.decode(msgspec.json.encode(out))


# --- options -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [("90", 90), ("2:00:00", 120), ("1-0", 1440), ("0:30", 1)])
def test_time_is_read_as_sbatch_reads_it(given: str, expected: int) -> None:
    assert _Minutes().convert(given, None, None) == expected


@pytest.mark.parametrize(("given", "expected"), [("16G", 16384), ("512", 512), ("7GB", 7168), ("1.5G", 1536)])
def test_memory_is_read_as_sbatch_reads_it(given: str, expected: int) -> None:
    assert _MemoryMib().convert(given, None, None) == expected


@pytest.mark.parametrize(
    ("kind", "bad", "says"),
    [
        (_Minutes(), "soon", "--time=soon"),
        (_Minutes(), "UNLIMITED", "finite"),
        (_MemoryMib(), "lots", "--mem=lots"),
        (_MemoryMib(), "0", "give a size"),
        (_Gpus(), "a100", "N or TYPE:N"),
        (_Gpus(), "a100:two", "N or TYPE:N"),
        (_EnvVar(), "NAME", "NAME=VALUE"),
        (_EnvVar(), "1X=a", "NAME=VALUE"),
        (_EnvVar(), "=a", "NAME=VALUE"),
    ],
)
def test_bad_option_values_say_what_is_expected(kind: click.ParamType[Any], bad: str, says: str) -> None:
    with pytest.raises(click.BadParameter, match=says):
        kind.convert(bad, None, None)


def test_gpus_and_env_values() -> None:
    assert _Gpus().convert("2", None, None) == (2, None)
    assert _Gpus().convert("a100:4", None, None) == (4, "a100")
    assert _EnvVar().convert("LR=0.1=x", None, None) == ("LR", "0.1=x")
    assert _EnvVar().convert("EMPTY=", None, None) == ("EMPTY", "")


def test_the_least_body_leaves_the_rest_to_the_gateway() -> None:
    body = create_body("dev")
    assert body == {"name": "dev", "start": True, "services": ["ssh"]}
    assert msgspec.convert(body, EnvironmentCreate).services == ["ssh"]


def test_every_option_reaches_its_field() -> None:
    body = create_body(
        "dev",
        description="my box",
        start=False,
        gpus=(2, "a100"),
        cpus=8,
        mem_mib=_MemoryMib().convert("32G", None, None),
        time_minutes=_Minutes().convert("1-2:30:00", None, None),
        partition="gpu",
        image="pytorch:24.01",
        datasets=["/data/imagenet", "/data/coco"],
        models=["/models/llama"],
        env=[("LR", "0.1"), ("WANDB_MODE", "offline")],
        ssh=True,
        tensorboard_logdir="/gemini/output/tb",
    )
    created = msgspec.convert(body, EnvironmentCreate)  # the API's own schema takes it as it is
    assert (created.name, created.description, created.start) == ("dev", "my box", False)
    assert (created.gpus, created.gpu_type, created.cpus, created.mem_mib) == (2, "a100", 8, 32768)
    assert (created.time_minutes, created.partition, created.image) == (1590, "gpu", "pytorch:24.01")
    assert created.datasets == ["/data/imagenet", "/data/coco"] and created.models == ["/models/llama"]
    assert created.env == {"LR": "0.1", "WANDB_MODE": "offline"}
    assert created.services == ["ssh", "tensorboard"] and created.tensorboard_logdir == "/gemini/output/tb"


def test_services_and_gpu_types() -> None:
    assert create_body("a", ssh=False)["services"] == []
    assert create_body("a", ssh=False, tensorboard=True)["services"] == ["tensorboard"]
    assert create_body("a", gpus=(1, None), gpu_type="h100").items() >= {"gpus": 1, "gpu_type": "h100"}.items()
    assert create_body("a", gpus=(1, "h100"), gpu_type="h100")["gpu_type"] == "h100"
    assert create_body("a", gpu_type="h100")["gpu_type"] == "h100" and "gpus" not in create_body("a", gpu_type="x")
    with pytest.raises(click.BadParameter, match="disagree"):
        create_body("a", gpus=(1, "a100"), gpu_type="h100")


def test_create_refuses_bad_input_before_asking_the_gateway(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"REMOTEGPU_URL": "http://127.0.0.1:9", "REMOTEGPU_TOKEN": "x", "XDG_CONFIG_HOME": str(tmp_path)}
    for argv, says in [
        (["--mem", "0"], "give a size"),
        (["-t", "later"], "--time=later"),
        (["--env", "oops"], "NAME=VALUE"),
        (["--no-start", "--wait"], "--no-start"),
        (["--gpus", "a100:1", "--gpu-type", "h100"], "disagree"),
    ]:
        result = runner.invoke(main, ["env", "create", "dev", *argv], env=env)
        assert result.exit_code == 2 and says in result.output, (argv, result.output)
        assert "cannot connect" not in result.output


# --- ssh keys ------------------------------------------------------------------------------------------------

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKy6bJ3N2yF6m4w5ZB1yWJm1pHn2N1cxSXc4a2ZlF0xW alice@laptop"


def test_a_public_key_file_gives_its_one_line(tmp_path: Path) -> None:
    assert public_key_line(ED25519 + "\n", "k.pub") == ED25519
    assert public_key_line(f"# mine\n\n  {ED25519}  \n", "k.pub") == ED25519


def test_a_private_key_is_refused_naming_its_public_half(tmp_path: Path) -> None:
    private = tmp_path / "id_ed25519"
    text = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    with pytest.raises(click.ClickException, match=r"private key.*give its public half"):
        public_key_line(text, str(private))
    (tmp_path / "id_ed25519.pub").write_text(ED25519)
    with pytest.raises(click.ClickException, match=re.escape(f"give {private}.pub")):
        public_key_line(text, str(private))
    with pytest.raises(click.ClickException, match="private key"):
        public_key_line("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n", "id_rsa")
    with pytest.raises(click.ClickException, match="private key"):
        public_key_line("PuTTY-User-Key-File-3: ssh-ed25519\n", "key.ppk")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "holds no public key"),
        ("# only a comment\n", "holds no public key"),
        (f"{ED25519}\n{ED25519}\n", "holds 2 keys"),
        ("---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----\n", "ssh-keygen -i"),
    ],
)
def test_key_files_that_are_not_one_key(text: str, says: str) -> None:
    with pytest.raises(click.ClickException, match=says):
        public_key_line(text, "k.pub")


def test_ssh_key_add_refuses_a_private_key_before_asking(tmp_path: Path) -> None:
    private = tmp_path / "id_ed25519"
    private.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n-----END OPENSSH PRIVATE KEY-----\n")
    env = {"REMOTEGPU_URL": "http://127.0.0.1:9", "REMOTEGPU_TOKEN": "x", "XDG_CONFIG_HOME": str(tmp_path)}
    result = CliRunner().invoke(main, ["ssh-key", "add", str(private)], env=env)
    assert result.exit_code == 1 and "private key" in result.output and "cannot connect" not in result.output
    missing = CliRunner().invoke(main, ["ssh-key", "add", str(tmp_path / "nope.pub")], env=env)
    assert missing.exit_code == 1 and "cannot read" in missing.output


def test_ssh_key_table() -> None:
    keys = [
        {
            "id": 3,
            "name": "alice@laptop",
            "key_type": "ssh-ed25519",
            "bits": 256,
            "fingerprint": "SHA256:abc",
            "public_key": "ssh-ed25519 AAAA",
            "created_at": "2025-03-01T12:00:00Z",
        }
    ]
    lines = render_table(["ID", "NAME", "TYPE", "BITS", "FINGERPRINT", "ADDED"], ssh_key_rows(keys))
    assert lines[0].split() == ["ID", "NAME", "TYPE", "BITS", "FINGERPRINT", "ADDED"]
    assert lines[1].split() == ["3", "alice@laptop", "ssh-ed25519", "256", "SHA256:abc", "2025-03-01T12:00:00Z"]


# --- tables and the one-environment view ---------------------------------------------------------------------


def test_list_rows_read_the_api_fields() -> None:
    running = view(gpus=2, gpu_type="a100")
    pending = view("pending", ssh=False, reason="QOSGrpGRES", gpus=1) | {"id": "ab" * 16, "name": "big"}
    lines = render_table(ENV_HEADERS, env_rows([running, pending], NOW))
    assert lines[0].split() == ENV_HEADERS
    assert lines[1].split() == ["01234567", "dev", "alice", "running", "a100:2", "node1", "30001", "3h", "-"]
    assert lines[2].split() == ["abababab", "big", "alice", "pending", "1", "-", "-", "3h", "QOSGrpGRES"]
    assert all(len(line) >= len(lines[0].rstrip()) - 20 for line in lines)  # padded columns


def test_age() -> None:
    for delta, text in [(timedelta(seconds=5), "5s"), (timedelta(minutes=3), "3m"), (timedelta(days=2), "2d")]:
        assert age((NOW - delta).isoformat(), NOW) == text
    assert age(None, NOW) == ""


def test_show_has_the_ssh_line_and_the_config_stanza() -> None:
    env = view(gpus=1, cpus=4, mem_mib=16384, time_minutes=120, env={"LR": "0.1"}, datasets=["/data/a"])
    lines = show_lines(env)
    text = "\n".join(lines)
    assert f"Environment:  {ENV_ID}" in lines and "SSH:          ssh -p 30001 alice@gw.example.org" in lines
    assert "Memory:       16G" in lines and "Time limit:   02:00:00" in lines and "Env:          LR=0.1" in lines
    assert "Slurm job:    42" in lines and "Node:         node1" in lines and "Datasets:     /data/a" in lines
    assert text.endswith("~/.ssh/config:\n  Host dev\n    HostName gw.example.org\n    Port 30001\n    User alice")
    stopped = show_lines(view("stopped", ssh=False, number=0))
    assert "SSH:          -" in stopped and "Slurm job:    -" in stopped and "~/.ssh/config:" not in stopped


def test_port_and_event_rows() -> None:
    port = PortMappingOut(
        id=1,
        service="ssh",
        node="node1",
        node_port=41234,
        public_port=30001,
        created_at=NOW,
        last_accessed_at=NOW,
        auto_release_hours=48,
        released_at=NOW,
        release_reason="idle",
    )
    event = EnvironmentEventOut(id="e1", at=NOW, kind="started", message="Slurm job 42", actor="alice", job_id=None)
    ports = msgspec.json.decode(msgspec.json.encode([port]))
    events = msgspec.json.decode(msgspec.json.encode([event]))
    [row] = list(port_rows(ports))
    assert row[:4] == ["ssh", 30001, "node1", 41234] and row[5] == "48h" and row[6].endswith("(idle)")
    assert list(event_rows(events)) == [[events[0]["at"], "started", "alice", "Slurm job 42"]]


# --- ssh -----------------------------------------------------------------------------------------------------


def test_ssh_argv_from_the_ssh_field() -> None:
    argv = ssh_argv(view(), ["-L", "6006:localhost:6006", "nvidia-smi"])
    assert argv == [
        "ssh",
        "-p",
        "30001",
        "-o",
        f"HostKeyAlias=remotegpu-env-{ENV_ID}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "alice@gw.example.org",
        "-L",
        "6006:localhost:6006",
        "nvidia-smi",
    ]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (view("stopped", ssh=False), "is stopped: start it with `remotegpu env start dev --wait`"),
        (view("failed", ssh=False, reason="NODE_FAIL"), "is failed (NODE_FAIL): start it"),
        (view("pending", ssh=False, reason="Resources"), "is pending (Resources): wait for it"),
        (view("running", ssh=False, services=["tensorboard"]), "runs no sshd"),
        (view("running", ssh=False), "env ports dev --remap"),
    ],
)
def test_no_ssh_says_why_and_what_to_do(env: dict[str, Any], says: str) -> None:
    assert says in not_reachable(env)
    with pytest.raises(click.ClickException, match="environment dev"):
        ssh_argv(env, [])


# --- --wait --------------------------------------------------------------------------------------------------


def _run(waiter: Waiter, views: list[dict[str, Any]]) -> tuple[list[str], tuple[bool, str] | None, int]:
    """Feed views until the waiter says it is over: the progress lines, the outcome and how many were read."""
    lines: list[str] = []
    for seen, env in enumerate(views, 1):
        if (line := waiter.progress(env)) is not None:
            lines.append(line)
        if (outcome := waiter.outcome(env)) is not None:
            return lines, outcome, seen
    return lines, None, len(views)


def test_wait_until_reachable_over_ssh() -> None:
    views = [
        view("pending", ssh=False, reason="Priority"),
        view("pending", ssh=False, reason="Priority"),
        view("pending", ssh=False, reason="Resources"),
        view("starting", ssh=False),
        view("running", ssh=False),  # the job runs, sshd has not called back yet
        view("running"),
        view("running"),
    ]
    lines, outcome, seen = _run(Waiter("running"), views)
    assert outcome == (True, "") and seen == 6
    assert lines == [
        "pending (Priority)",
        "pending (Resources)",
        "starting on node1",
        "running on node1",
        "running on node1, ssh port 30001",
    ]


def test_wait_without_ssh_ends_at_running() -> None:
    assert _run(Waiter("running"), [view("running", ssh=False, services=["tensorboard"])])[1] == (True, "")


def test_wait_ends_non_zero_with_the_reason() -> None:
    failed = [view("pending", ssh=False), view("failed", ssh=False, reason="launch failed: no sshd")]
    assert _run(Waiter("running"), failed)[1] == (False, "environment dev failed: launch failed: no sshd")
    ended = [view("running", ssh=False), view("stopped", ssh=False, reason="TIMEOUT")]  # before sshd called back
    assert _run(Waiter("running"), ended)[1] == (False, "environment dev stopped: TIMEOUT")


def test_a_restart_passes_through_stopped() -> None:
    views = [
        view("stopping", number=1),
        view("stopped", ssh=False, number=1, reason="stopped by alice"),  # the old session: not the end
        view("pending", ssh=False, number=2),
        view("running", number=2),
    ]
    assert _run(Waiter("running", prior_session=1), views)[1:] == ((True, ""), 4)
    # a new session that ends before running is the end
    early = [view("stopping", number=1), view("stopped", ssh=False, number=2, reason="TIMEOUT")]
    assert _run(Waiter("running", prior_session=1), early)[1] == (False, "environment dev stopped: TIMEOUT")


def test_wait_for_stopped() -> None:
    assert _run(Waiter("stopped"), [view("stopping"), view("stopped", ssh=False)])[1:] == ((True, ""), 2)
    assert _run(Waiter("stopped"), [view("failed", ssh=False, reason="x")])[1] == (False, "environment dev failed: x")
    assert _run(Waiter("stopped"), [view("unknown"), view("running")])[1] is None


# --- ID|NAME -------------------------------------------------------------------------------------------------


def test_a_name_beats_a_prefix_and_the_callers_own_beats_others() -> None:
    mine, theirs = {"id": "a" * 32, "user": "me"}, {"id": "b" * 32, "user": "bob"}
    assert pick("dev", [mine], [theirs], "me") is mine
    assert pick("dev", [theirs, mine], [], "me") is mine
    assert pick("abcd", [], [theirs], "me") is theirs
    assert pick("abcd", [], [], "me") is None
    with pytest.raises(ApiError, match=r"several users \(bob, carol\): give its id"):
        pick("dev", [theirs, {"id": "c" * 32, "user": "carol"}], [], "me")
    with pytest.raises(ApiError, match="give more of it"):
        pick("abcd", [], [mine, theirs], "me")


def test_every_env_and_ssh_key_command_has_help() -> None:
    runner = CliRunner()
    for group, commands in [
        ("env", ["create", "list", "show", "stop", "start", "restart", "delete", "ports", "ssh", "events"]),
        ("ssh-key", ["add", "list", "delete"]),
    ]:
        listed = runner.invoke(main, [group, "--help"])
        assert listed.exit_code == 0 and all(name in listed.output for name in commands), listed.output
        for name in commands:
            result = runner.invoke(main, [group, name, "--help"])
            assert result.exit_code == 0 and "Usage:" in result.output, (group, name, result.output)
