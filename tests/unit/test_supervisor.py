"""``remotegpu-session``'s pure parts: what it writes into sshd_config, what a login gets of the job, its choices."""

from __future__ import annotations

import socket

import msgspec
import pytest

from gateway.environments import schemas
from gateway.environments.supervisor import (
    AUTHORIZED_KEYS,
    HOST_KEY,
    CallbackReply,
    CallbackRequest,
    _parse,
    authorized_keys_text,
    backoff,
    child_environment,
    descendants,
    free_port,
    gateway_endpoint,
    job_variables,
    listen_address,
    listening_sockets,
    parse_services,
    render_sshd_config,
    setenv_line,
    setenv_word,
    tensorboard_argv,
    valid_prefix,
)

TOKEN = "REMOTEGPU_SESSION_TOKEN"


def split_config_words(line: str) -> list[str]:
    """sshd's reading of one config line, as its manual describes it: blanks separate words, double or single quotes
    group them, and a backslash escapes a quote, a backslash, or (outside quotes) a blank."""
    words: list[str] = []
    i = 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
            continue
        word, quote = [], ""
        while i < len(line):
            c = line[i]
            if c == "\\" and i + 1 < len(line) and (line[i + 1] in "'\"\\" or (not quote and line[i + 1] == " ")):
                word.append(line[i + 1])
                i += 2
                continue
            if not quote and c in " \t":
                break
            if not quote and c in "'\"":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                word.append(c)
            i += 1
        assert not quote, f"unterminated quote in {line!r}"
        words.append("".join(word))
    return words


@pytest.mark.parametrize(
    "value",
    [
        "4242",
        "",
        "two words",
        'a "quoted" word',
        'back\\slash and \\" both',
        "it's #not a comment $HOME `x` ;|&",
        "tab\there",
        "ünïcödé",
        "ends with a blank ",
        "=equals=",
    ],
)
def test_setenv_words_read_back_as_written(value: str) -> None:
    word = setenv_word("SLURM_JOB_NAME", value)
    assert word is not None
    assert split_config_words(f"SetEnv {word}") == ["SetEnv", f"SLURM_JOB_NAME={value}"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SLURM_X", "line\nbreak"),
        ("SLURM_X", "carriage\rreturn"),
        ("SLURM_X", "bell\x07"),
        ("SLURM_X", "del\x7f"),
        ("SLURM_X", "bad\udcffbytes"),  # an undecodable byte of the environment, surrogate-escaped
        ("BASH_FUNC_module%%", "() { :; }"),
        ("1ABC", "x"),
        ("A B", "x"),
        ("", "x"),
    ],
)
def test_what_cannot_be_written_safely_is_left_out(name: str, value: str) -> None:
    assert setenv_word(name, value) is None
    line, skipped = setenv_line({name: value, "SLURM_JOB_ID": "7"})
    assert skipped == [name]
    assert line == 'SetEnv "SLURM_JOB_ID=7"'


def test_one_setenv_line_for_all_variables() -> None:
    """sshd takes only the first SetEnv line: every variable is on it."""
    line, skipped = setenv_line({"A": "1", "B": "x y"})
    assert line == 'SetEnv "A=1" "B=x y"' and skipped == []
    assert setenv_line({}) == (None, [])


def test_job_variables_are_the_jobs_and_never_the_token() -> None:
    environ = {
        "SLURM_JOB_ID": "42",
        "SLURMD_NODENAME": "n1",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "GEMINI_CODE": "/gemini/code",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "TMPDIR": "/tmp/job42",
        TOKEN: "secret",
        "REMOTEGPU_URL": "http://gw",
        "HOME": "/home/alice",
        "PATH": "/usr/bin",
        "SHELL": "/bin/bash",
        "SSH_AUTH_SOCK": "/tmp/agent",
        "WANDB_PROJECT": "p",
        "OTHER": "o",
    }
    chosen = job_variables(environ, ["WANDB_PROJECT", TOKEN])
    assert chosen == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "GEMINI_CODE": "/gemini/code",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "SLURMD_NODENAME": "n1",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "SLURM_JOB_ID": "42",
        "TMPDIR": "/tmp/job42",
        "WANDB_PROJECT": "p",
    }
    assert list(chosen) == sorted(chosen)  # the same config for the same job


def test_services_get_the_environment_without_the_token() -> None:
    assert child_environment({TOKEN: "s", "SLURM_JOB_ID": "1", "PATH": "/bin"}) == {"SLURM_JOB_ID": "1", "PATH": "/bin"}


def test_sshd_config_is_keys_only_for_one_user() -> None:
    text, skipped = render_sshd_config(
        state_dir="/home/alice/.remotegpu/environments/e1",
        host="10.0.0.5",
        port=40022,
        user="alice",
        variables={"SLURM_JOB_ID": "42", "SLURM_BAD": "a\nb"},
    )
    lines = text.splitlines()
    settings = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in lines if not line.startswith("#")}
    assert settings["ListenAddress"] == "10.0.0.5:40022"
    assert settings["HostKey"] == f"/home/alice/.remotegpu/environments/e1/{HOST_KEY}"
    assert settings["AuthorizedKeysFile"] == f"/home/alice/.remotegpu/environments/e1/{AUTHORIZED_KEYS}"
    for key, value in {
        "AuthenticationMethods": "publickey",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PermitRootLogin": "no",
        "PermitUserEnvironment": "no",
        "AllowUsers": "alice",
        "UsePAM": "no",
        "PidFile": "none",
        "Subsystem": "sftp internal-sftp",
        "SetEnv": '"SLURM_JOB_ID=42"',
    }.items():
        assert settings[key] == value, key
    assert [line.split(" ", 1)[0] for line in lines].count("SetEnv") == 1
    assert len(settings) == len([line for line in lines if not line.startswith("#")])  # no keyword twice
    assert skipped == ["SLURM_BAD"]


def test_sshd_config_edge_cases() -> None:
    text, _ = render_sshd_config(state_dir="/s", host="::1", port=2222, user="first.last", variables={})
    assert "ListenAddress [::1]:2222\n" in text and "AllowUsers first.last\n" in text and "SetEnv" not in text
    # a name AllowUsers would read as a pattern or user@host: no AllowUsers (an unprivileged sshd is only its user)
    text, _ = render_sshd_config(state_dir="/s", host="127.0.0.1", port=1, user="a@b", variables={})
    assert "AllowUsers" not in text
    for bad in ("/home/a b", "/home/%u", '/home/"x"', "relative", "/home/x\n"):
        with pytest.raises(ValueError, match="state dir"):
            render_sshd_config(state_dir=bad, host="127.0.0.1", port=1, user="a", variables={})


def test_authorized_keys_one_line_each() -> None:
    keys = ["ssh-ed25519 AAAA alice@laptop", "  ssh-rsa BBBB  \n", "ssh-ed25519 CCCC\nssh-ed25519 EVIL", "", "x\0y"]
    text, dropped = authorized_keys_text(keys)
    assert text == "ssh-ed25519 AAAA alice@laptop\nssh-rsa BBBB\n" and dropped == 3
    assert authorized_keys_text([]) == ("", 0)


def test_services_named_on_the_command_line() -> None:
    assert parse_services("ssh,tensorboard") == ["ssh", "tensorboard"]
    assert parse_services("tensorboard, ssh,ssh") == ["ssh", "tensorboard"]
    assert parse_services("jupyterlab,ssh") == ["ssh", "jupyterlab"]  # started when the hub's variables are set
    assert parse_services("jupyterlab") == ["jupyterlab"]
    with pytest.raises(ValueError, match="vnc"):
        parse_services("ssh,vnc")


def test_gateway_endpoint() -> None:
    assert gateway_endpoint("http://127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert gateway_endpoint("https://gpu.example.org/base/") == ("gpu.example.org", 443)
    assert gateway_endpoint("http://gw") == ("gw", 80)
    assert gateway_endpoint("http://[::1]:9000") == ("::1", 9000)
    for bad in ("ftp://gw", "gw:8000", "http://", "http://gw:99999"):
        with pytest.raises(ValueError):
            gateway_endpoint(bad)


def test_listen_address() -> None:
    assert listen_address("10.1.2.3", 22) == "10.1.2.3:22"
    assert listen_address("fe80::1", 22) == "[fe80::1]:22"


def test_tensorboard_command_and_prefix() -> None:
    assert tensorboard_argv("/v/bin/tensorboard", logdir="/gemini/output", host="10.0.0.5", port=6006, prefix=None) == [
        "/v/bin/tensorboard", "--logdir", "/gemini/output", "--host", "10.0.0.5", "--port", "6006",
    ]  # fmt: skip
    argv = tensorboard_argv("tb", logdir="/o", host="h", port=1, prefix="/api/v1/workspaces/w/environments/e/tb")
    assert argv[-2:] == ["--path_prefix", "/api/v1/workspaces/w/environments/e/tb"]
    assert valid_prefix("/api/v1/workspaces/w-1/environments/e_2/tensorboard")
    for bad in ("", "/", "/a/", "a/b", "/a b", "/a//b", "/a?x=1", "/a\n"):
        assert not valid_prefix(bad), bad


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff(n) for n in range(7)] == [1, 2, 4, 8, 16, 20, 20]
    assert backoff(10_000) == 20


def test_descendants_of_a_process() -> None:
    # sshd 10 -> per-connection 11 -> user's 12 -> shell 13; tensorboard 20 -> 21; unrelated 30 -> 31
    table = {10: 1, 11: 10, 12: 11, 13: 12, 20: 1, 21: 20, 30: 1, 31: 30}
    assert descendants(table, 10) == [11, 12, 13]
    assert descendants(table, 20) == [21]
    assert descendants(table, 13) == []
    assert descendants(table, 99) == []


def test_listening_sockets_of_proc_net_tcp() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5551 1 0\n"
        "   1: 0100007F:9C41 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 5552 1 0\n"
    )
    assert listening_sockets(table) == {5551: 0x9C40}
    assert listening_sockets(table.splitlines()[0]) == {}


def test_free_port_is_free() -> None:
    port = free_port("127.0.0.1")
    assert 1024 <= port <= 65535
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_command_line() -> None:
    options = _parse(
        ["--gateway", "http://gw:8000/", "--services", "ssh,tensorboard", "--state-dir", "/home/a/.rg/e1",
         "--tensorboard-prefix", "/api/v1/x/tensorboard", "--pass-env", "A, B"]
    )  # fmt: skip
    assert options.gateway == "http://gw:8000" and options.services == ["ssh", "tensorboard"]
    assert str(options.state_dir) == "/home/a/.rg/e1" and options.pass_env == ["A", "B"]
    base = ["--gateway", "http://gw", "--state-dir", "/s"]
    for bad in (
        ["--services", "jupyterlab"],
        ["--services", "ssh,vnc"],
        ["--services", "ssh", "--tensorboard-prefix", "/a/"],
        ["--services", "ssh", "--pass-env", "A-B"],
        ["--services", "ssh", "--state-dir", "/home/a b"],
    ):
        with pytest.raises(SystemExit) as exit_:
            _parse([*base, *bad])
        assert exit_.value.code == 2


def test_the_wire_format_is_the_gateways() -> None:
    """The supervisor keeps its own copy of CallbackIn/CallbackOut (start-up time): the same fields."""

    def names(struct: type[msgspec.Struct]) -> set[str]:
        return {f.name for f in msgspec.structs.fields(struct)}

    assert names(CallbackRequest) == names(schemas.CallbackIn)
    assert names(CallbackReply) == names(schemas.CallbackOut)
    sent = msgspec.json.encode(
        CallbackRequest(node="n1", host="10.0.0.5", services={"ssh": 40022, "tensorboard": 6006})
    )
    assert msgspec.json.decode(sent, type=schemas.CallbackIn).services == {"ssh": 40022, "tensorboard": 6006}
    answer = msgspec.json.encode(
        schemas.CallbackOut(authorized_keys=["ssh-ed25519 AAAA"], tensorboard_path_prefix="/p")
    )
    assert msgspec.json.decode(answer, type=CallbackReply) == CallbackReply(
        authorized_keys=["ssh-ed25519 AAAA"], tensorboard_path_prefix="/p"
    )
