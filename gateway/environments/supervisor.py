"""``remotegpu-session``: the job side of a development environment (one session = one Slurm batch job).

The batch script ends with ``exec remotegpu-session --gateway URL --services ssh,tensorboard --state-dir DIR``;
``REMOTEGPU_SESSION_TOKEN`` is in its environment, never on a command line. The supervisor

1. finds the address the gateway reaches this node at: the local end of a TCP connection to the gateway;
2. starts each service on a free port of that address, as the job's user: an unprivileged OpenSSH ``sshd`` (its
   host key in the state dir, kept across starts; only the keys the gateway answers; the job's variables through
   ``SetEnv``, so that logins land in the job) and TensorBoard; it waits until each one listens;
   With ``jupyterlab`` among the services and the hub's variables in its environment (a start from JupyterHub),
   it also starts ``batchspawner-singleuser jupyterhub-singleuser``: batchspawner's single-user side picks the
   port and tells the hub (its own handshake); only that process gets the hub's variables;
3. calls the gateway back once (``POST /api/v1/sessions/callback``) with the node, address and ports, and writes
   the ``authorized_keys`` it answers;
4. stays in the foreground until the last service exits, or until SIGTERM/SIGINT (scancel, the time limit),
   when it stops the services and everything they started.

It logs one plain-text line per event to stdout (the job's output file). Exit codes: 0 stopped on request or
every service ended cleanly; 1 a service failed or did not start; 2 bad arguments or environment; 3 the gateway
refused the callback (a 4xx); 4 the gateway could not be reached in time.

Everything that decides something is a small pure function (config rendering, quoting, selection of variables,
process trees); the impure rest is thin.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import httpx
import msgspec

TOKEN_VARIABLE = "REMOTEGPU_SESSION_TOKEN"  # gateway.environments.tokens.VARIABLE (not imported: start-up time)
CALLBACK_PATH = "/api/v1/sessions/callback"
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
SUPERVISED = ("ssh", "tensorboard")
"""Services started on a port of this process's choosing, then reported to the gateway."""
KNOWN_SERVICES = (*SUPERVISED, "jupyterlab")
"""``jupyterlab``: the hub's single-user server, which reports its port to the hub itself."""
HUB_PREFIXES = ("JUPYTERHUB_", "JPY_")
"""The hub's variables (gateway.environments.hub): for the single-user server only."""

EXIT_OK, EXIT_SERVICE, EXIT_USAGE, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3, 4

HOST_KEY = "ssh_host_ed25519_key"
AUTHORIZED_KEYS = "authorized_keys"
SSHD_CONFIG = "sshd_config"

JOB_VARIABLE_PREFIXES = ("SLURM_", "SLURMD_", "GEMINI_")
JOB_VARIABLES = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "NVIDIA_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
        "ZE_AFFINITY_MASK",
        "TMPDIR",
    }
)
"""What an SSH login gets of the job's environment (plus ``--pass-env`` names): where it runs and on what GPUs."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
"""A user name AllowUsers takes literally (no ``@host``, no pattern characters)."""
_CONFIG_PATH = re.compile(r"/[A-Za-z0-9._+=,@~:/-]{0,4000}")
"""Paths written into sshd_config: nothing sshd would split, expand (``%``) or unquote."""
_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_NODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

log = logging.getLogger("remotegpu-session")


class SupervisorError(Exception):
    """A failure that ends the session, with the exit code it ends with."""

    def __init__(self, message: str, code: int = EXIT_SERVICE) -> None:
        super().__init__(message)
        self.code = code


class Stopped(Exception):
    """SIGTERM/SIGINT arrived while starting: stop what runs and exit 0."""


# -- the callback's wire format (gateway.environments.schemas.CallbackIn/CallbackOut; a unit test keeps them equal)


class CallbackRequest(msgspec.Struct, kw_only=True):
    node: str
    host: str
    services: dict[str, int]


class CallbackReply(msgspec.Struct, kw_only=True):
    authorized_keys: list[str]
    tensorboard_path_prefix: str | None = None


# -- pure functions


def parse_services(text: str) -> list[str]:
    """``ssh,tensorboard,jupyterlab`` -> the services, in a fixed order."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted({name for name in names if name not in KNOWN_SERVICES})
    if unknown:
        raise ValueError(f"unknown service(s) {', '.join(unknown)} (known: {', '.join(KNOWN_SERVICES)})")
    return [name for name in KNOWN_SERVICES if name in names]


def hub_launched(environ: Mapping[str, str]) -> bool:
    """Whether the session was started from JupyterHub (its single-user variables are here)."""
    return bool(environ.get("JUPYTERHUB_API_TOKEN")) and bool(environ.get("JUPYTERHUB_API_URL"))


def singleuser_argv(bindir: Path) -> list[str]:
    """batchspawner's single-user wrapper around ``jupyterhub-singleuser``, from this Python's venv."""
    wrapper, server = bindir / "batchspawner-singleuser", bindir / "jupyterhub-singleuser"
    missing = [str(p) for p in (wrapper, server) if not os.access(p, os.X_OK)]
    if missing:
        raise SupervisorError(f"JupyterLab needs {', '.join(missing)} (install remotegpu[session])")
    return [str(wrapper), str(server)]


def gateway_endpoint(url: str) -> tuple[str, int]:
    """The host and TCP port of the gateway's URL (the scheme's default port when none is given)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"gateway URL must be http(s)://host[:port], not {url!r}")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"gateway URL has a bad port: {url!r}") from error
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def listen_address(host: str, port: int) -> str:
    """``host:port`` as sshd's ListenAddress takes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def job_variables(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The job's variables an SSH login gets: Slurm's, the /gemini layout's, the GPUs', and ``extra`` names.

    Never the callback token (nor anything else ``REMOTEGPU_``), and none of what a login sets for itself.
    """
    wanted = set(extra)
    chosen = {
        name: value
        for name, value in environ.items()
        if (name.startswith(JOB_VARIABLE_PREFIXES) or name in JOB_VARIABLES or name in wanted)
        and not name.startswith("REMOTEGPU_")
    }
    return dict(sorted(chosen.items()))


def setenv_word(name: str, value: str) -> str | None:
    """One ``NAME=VALUE`` word of sshd_config's SetEnv, quoted; None when it cannot be written safely.

    sshd splits a config line into words: a double-quoted word may hold blanks, ``#`` and ``'``, and inside it
    ``\\"`` and ``\\\\`` stand for ``"`` and ``\\``. A line cannot hold a newline, so values with control
    characters (other than tab) are left out, as are names that are not plain variable names.
    """
    if not _ENV_NAME.fullmatch(name):
        return None
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from the environment (surrogate escapes)
        return None
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{name}={escaped}"'


def setenv_line(variables: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """sshd_config's one ``SetEnv`` line (sshd reads only the first SetEnv line) and the names left out."""
    words, skipped = [], []
    for name, value in variables.items():
        word = setenv_word(name, value)
        if word is None:
            skipped.append(name)
        else:
            words.append(word)
    return ("SetEnv " + " ".join(words) if words else None), skipped


def render_sshd_config(
    *, state_dir: str, host: str, port: int, user: str, variables: Mapping[str, str]
) -> tuple[str, list[str]]:
    """An unprivileged sshd's config: keys only (the state dir's), no passwords, no root, the job's variables.

    Returns the text and the names of the variables that could not be written.
    """
    if not _CONFIG_PATH.fullmatch(state_dir):
        raise ValueError(f"state dir {state_dir!r} has characters sshd_config cannot take")
    setenv, skipped = setenv_line(variables)
    lines = [
        "# Written by remotegpu-session at each start of the environment; edits are lost.",
        f"ListenAddress {listen_address(host, port)}",
        f"HostKey {state_dir}/{HOST_KEY}",
        f"AuthorizedKeysFile {state_dir}/{AUTHORIZED_KEYS}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "GSSAPIAuthentication no",
        "KerberosAuthentication no",
        "PermitEmptyPasswords no",
        "PermitRootLogin no",
        "PermitUserEnvironment no",
        *([f"AllowUsers {user}"] if _USER.fullmatch(user) else []),
        "UsePAM no",
        "StrictModes no",  # the state dir is made 0700 and its files 0600 by the supervisor itself
        "PidFile none",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "AllowTcpForwarding yes",  # VS Code Remote-SSH and PyCharm tunnel to their servers
        "AcceptEnv LANG LC_*",
        "Subsystem sftp internal-sftp",
        *([setenv] if setenv else []),
    ]
    return "\n".join(lines) + "\n", skipped


def authorized_keys_text(keys: Iterable[str]) -> tuple[str, int]:
    """The authorized_keys file for ``keys`` (one line each) and how many were left out (not one line)."""
    lines, dropped = [], 0
    for key in keys:
        key = key.strip()
        if not key or any(c in key for c in "\r\n\0"):
            dropped += 1
        else:
            lines.append(key)
    return "".join(f"{line}\n" for line in lines), dropped


def valid_prefix(prefix: str) -> bool:
    """A TensorBoard ``--path_prefix``: ``/a/b``, no trailing slash, nothing to quote."""
    return bool(_PREFIX.fullmatch(prefix))


def tensorboard_argv(program: str, *, logdir: str, host: str, port: int, prefix: str | None) -> list[str]:
    argv = [program, "--logdir", logdir, "--host", host, "--port", str(port)]
    return argv + (["--path_prefix", prefix] if prefix else [])


def sshd_argv(config: str) -> list[str]:
    return [SSHD, "-D", "-e", "-f", config]


def backoff(attempt: int, *, first: float = 1.0, cap: float = 20.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): doubling from ``first``, at most ``cap``."""
    return float(min(cap, first * 2 ** min(attempt, 16)))


def descendants(parents: Mapping[int, int], root: int) -> list[int]:
    """Every process below ``root`` in a ``{pid: ppid}`` table, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, queue = [], list(children.get(root, ()))
    while queue:
        pid = queue.pop(0)
        if pid in found or pid == root:
            continue
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def child_environment(environ: Mapping[str, str], *, hub: bool = False) -> dict[str, str]:
    """The environment of a service: the supervisor's, without the callback token; the hub's variables only for
    the single-user server (``hub``)."""
    return {
        name: value
        for name, value in environ.items()
        if name != TOKEN_VARIABLE and (hub or not name.startswith(HUB_PREFIXES))
    }


# -- processes


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of a live process, from /proc; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def process_table() -> dict[int, tuple[int, int]]:
    """``{pid: (ppid, start time)}`` of every live process this user can see."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    return table


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    """In the child before exec: SIGTERM when the supervisor dies without stopping it (e.g. SIGKILL)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Service:
    name: str
    port: int
    argv: list[str]
    process: subprocess.Popen[bytes]
    returncode: int | None = None
    tree: dict[int, int] = field(default_factory=dict)
    """Processes below it (pid -> start time), as last seen: sshd's per-connection children, TensorBoard's own."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.process.poll()
        return self.returncode

    def snapshot_tree(self) -> None:
        table = process_table()
        below = descendants({pid: ppid for pid, (ppid, _) in table.items()}, self.pid)
        self.tree.update({pid: table[pid][1] for pid in below})

    def signal_all(self, sig: signal.Signals) -> None:
        """``sig`` to the service's process group and to every process seen below it (if still the same one)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        for pid, started in list(self.tree.items()):
            stat = _proc_stat(pid)
            if stat is None or stat[1] != started:
                del self.tree[pid]
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def gone(self) -> bool:
        """Exited, and nothing seen below it still runs."""
        if self.poll() is None:
            return False
        return all((stat := _proc_stat(pid)) is None or stat[1] != started for pid, started in self.tree.items())


def listening_sockets(table: str) -> dict[int, int]:
    """``{socket inode: port}`` of the listening sockets in a ``/proc/net/tcp`` (or ``tcp6``) table."""
    found = {}
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == "0A":  # TCP_LISTEN
            found[int(fields[9])] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def listening_ports(pid: int) -> set[int] | None:
    """The TCP ports process ``pid`` itself listens on; None where /proc does not tell."""
    try:
        inodes = set()
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = str(Path(fd.path).readlink())
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        sockets: dict[int, int] = {}
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(FileNotFoundError):
                sockets.update(listening_sockets(Path(f"/proc/{pid}/net/{table}").read_text()))
    except OSError:
        return None
    return {port for inode, port in sockets.items() if inode in inodes}


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def listen_state(host: str, port: int, process: subprocess.Popen[bytes]) -> bool | None:
    """True once ``process`` listens on ``port``, False if it has exited, None while neither.

    The process's own sockets are looked up in /proc (no probe connection in sshd's log, and no mistaking another
    program that took the port first); where /proc does not tell, a connection to host:port is the test.
    """
    if process.poll() is not None:
        return False
    ports = listening_ports(process.pid)
    if (port in ports) if ports is not None else _accepts(host, port):
        return process.poll() is None
    return None


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now (the kernel's choice of an ephemeral port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def local_address(host: str, port: int, deadline: float, stop: threading.Event) -> str:
    """The address of this node the gateway reaches: the local end of a TCP connection to it (retried)."""
    attempt = 0
    while True:
        try:
            with socket.create_connection((host, port), timeout=10) as connection:
                address = connection.getsockname()[0]
                return str(ipaddress.ip_address(address.split("%", 1)[0]))
        except OSError as error:
            if time.monotonic() > deadline:
                raise SupervisorError(f"gateway {host}:{port} unreachable: {error}", EXIT_UNREACHABLE) from None
            log.info("gateway %s:%s not reachable yet (%s); retrying", host, port, error)
            if stop.wait(backoff(attempt)):
                raise Stopped from None
            attempt += 1


# -- the supervisor


@dataclass
class Options:
    gateway: str
    services: list[str]
    state_dir: Path
    tensorboard_logdir: str | None
    tensorboard_prefix: str | None
    pass_env: list[str]
    start_timeout: float
    callback_timeout: float
    grace: float


def _parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="remotegpu-session", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="the gateway's URL, e.g. https://gpu.example.org")
    parser.add_argument("--services", required=True, help="comma-separated: ssh, tensorboard (jupyterlab: the hub's)")
    parser.add_argument("--state-dir", required=True, help="this environment's persistent directory (host key...)")
    parser.add_argument("--tensorboard-logdir", help="TensorBoard's log directory (default: $GEMINI_DATA_OUT)")
    parser.add_argument("--tensorboard-prefix", help="TensorBoard's path prefix behind the gateway (/api/v1/...)")
    parser.add_argument(
        "--pass-env", default="", help="comma-separated names of more job variables an SSH login gets (the user's)"
    )
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds for each service to listen")
    parser.add_argument("--callback-timeout", type=float, default=300.0, help="seconds to keep trying the gateway")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL at the end")
    args = parser.parse_args(argv)
    try:
        services = parse_services(args.services)
        gateway_endpoint(args.gateway)
    except ValueError as error:
        parser.error(str(error))
    if not services or (services == ["jupyterlab"] and not hub_launched(os.environ)):
        parser.error("no service to run here (jupyterlab runs when the session is started from JupyterHub)")
    pass_env = [name.strip() for name in args.pass_env.split(",") if name.strip()]
    if bad := [name for name in pass_env if not _ENV_NAME.fullmatch(name)]:
        parser.error(f"--pass-env: not variable names: {', '.join(bad)}")
    if args.tensorboard_prefix is not None and not valid_prefix(args.tensorboard_prefix):
        parser.error(f"--tensorboard-prefix must look like /a/b (no trailing slash): {args.tensorboard_prefix!r}")
    state_dir = Path(args.state_dir).expanduser().absolute()
    if not _CONFIG_PATH.fullmatch(str(state_dir)):
        parser.error(f"--state-dir has characters sshd_config cannot take: {str(state_dir)!r}")
    return Options(
        gateway=args.gateway.rstrip("/"),
        services=services,
        state_dir=state_dir,
        tensorboard_logdir=args.tensorboard_logdir,
        tensorboard_prefix=args.tensorboard_prefix,
        pass_env=pass_env,
        start_timeout=args.start_timeout,
        callback_timeout=args.callback_timeout,
        grace=args.grace,
    )


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 (a reader never sees half a file)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def prepare_state_dir(state_dir: Path) -> None:
    """The state dir exists, is ours and is 0700 (sshd's StrictModes is off: this is its check)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = state_dir.stat()
    if info.st_uid != os.getuid():
        raise SupervisorError(f"state dir {state_dir} belongs to uid {info.st_uid}, not to this user", EXIT_USAGE)
    state_dir.chmod(0o700)


def _keygen(*args: str) -> str:
    return subprocess.run(  # noqa: S603 - ssh-keygen with our own arguments, no shell
        [SSH_KEYGEN, *args], check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True
    ).stdout


def ensure_host_key(state_dir: Path) -> str:
    """The environment's own host key (made once, kept across starts); returns its fingerprint."""
    key = state_dir / HOST_KEY
    if not key.exists():
        _keygen("-q", "-t", "ed25519", "-N", "", "-C", "remotegpu-session", "-f", str(key))
        log.info("made ssh host key %s", key)
    key.chmod(0o600)
    public = key.with_name(HOST_KEY + ".pub")
    _write_private(public, _keygen("-y", "-f", str(key)))
    listed = _keygen("-l", "-f", str(public)).split()
    return listed[1] if len(listed) > 1 else "?"


def tensorboard_program() -> str:
    """TensorBoard beside this Python (the supervisor's venv), else on PATH."""
    beside = Path(sys.executable).parent / "tensorboard"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("tensorboard")
    if found is None:
        raise SupervisorError("tensorboard is neither beside this Python nor on PATH (install remotegpu[session])")
    return found


@dataclass
class Plan:
    """How to start one service: its argv for a port; ``port``: that one only (a restart), else a free one."""

    name: str
    argv: Callable[[int], list[str]]
    port: int | None = None


class Supervisor:
    def __init__(self, options: Options, token: str, environ: Mapping[str, str]) -> None:
        self.options = options
        self.token = token
        self.environ = dict(environ)
        self.child_env = child_environment(environ)
        self.services: list[Service] = []
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.stop_signal: int | None = None
        self.host = ""
        self.tensorboard_prefix = options.tensorboard_prefix

    # signals

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_signal = signum
        self.stop.set()
        self.wake.set()

    def _on_child(self, _signum: int, _frame: FrameType | None) -> None:
        self.wake.set()

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGCHLD, self._on_child)

    # starting

    def launch(self, plan: Plan, port: int, env: Mapping[str, str] | None = None) -> Service:
        argv = plan.argv(port)
        process = subprocess.Popen(  # noqa: S603 - fixed programs, arguments are ours
            argv,
            env=self.child_env if env is None else env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_set_parent_death_signal,  # no threads run in the supervisor
        )
        service = Service(name=plan.name, port=port, argv=argv, process=process)
        self.services.append(service)
        log.info("started %s (pid %d) on %s", plan.name, process.pid, listen_address(self.host, port))
        return service

    def start(self, plans: Sequence[Plan]) -> None:
        """Start the services together and wait until each listens.

        One that exits before listening (another program took its port first) starts again on another port.
        """
        deadline = time.monotonic() + self.options.start_timeout
        waiting = {plan.name: (plan, 1, self.launch(plan, plan.port or free_port(self.host))) for plan in plans}
        while waiting:
            if self.stop.is_set():
                raise Stopped
            for name, (plan, tries, service) in list(waiting.items()):
                state = listen_state(self.host, service.port, service.process)
                if state:
                    log.info("%s listens on %s", name, listen_address(self.host, service.port))
                    del waiting[name]
                elif state is False:
                    self.services.remove(service)
                    log.info("%s exited with %s before listening on port %d", name, service.poll(), service.port)
                    if plan.port is not None or tries >= 5:
                        raise SupervisorError(f"{name} did not start (see its messages above)")
                    waiting[name] = (plan, tries + 1, self.launch(plan, free_port(self.host)))
            if waiting and time.monotonic() > deadline:
                raise SupervisorError(f"{', '.join(waiting)}: not listening after {self.options.start_timeout:.0f} s")
            if waiting:
                self.stop.wait(0.01)  # the check is a look at /proc; sshd listens some 30-60 ms after its start

    def ssh_plan(self) -> Plan:
        state = self.options.state_dir
        fingerprint = ensure_host_key(state)
        log.info("ssh host key %s", fingerprint)
        _write_private(state / AUTHORIZED_KEYS, "")  # only the keys this start's callback answers
        user = pwd.getpwuid(os.getuid()).pw_name
        variables = job_variables(self.environ, self.options.pass_env)

        def argv(port: int) -> list[str]:
            text, skipped = render_sshd_config(
                state_dir=str(state), host=self.host, port=port, user=user, variables=variables
            )
            if skipped:
                log.info("left out of SSH logins' environment (cannot be written safely): %s", ", ".join(skipped))
            _write_private(state / SSHD_CONFIG, text)
            return sshd_argv(str(state / SSHD_CONFIG))

        return Plan("ssh", argv)

    def tensorboard_plan(self, port: int | None = None) -> Plan:
        logdir = self.options.tensorboard_logdir or self.environ.get("GEMINI_DATA_OUT")
        if not logdir:
            raise SupervisorError("TensorBoard needs --tensorboard-logdir or GEMINI_DATA_OUT", EXIT_USAGE)
        program, prefix = tensorboard_program(), self.tensorboard_prefix
        return Plan(
            "tensorboard",
            lambda chosen: tensorboard_argv(program, logdir=logdir, host=self.host, port=chosen, prefix=prefix),
            port,
        )

    def start_jupyterlab(self) -> None:
        """The hub's single-user server: not waited for (it tells the hub its port; the hub waits for it)."""
        if not hub_launched(self.environ):
            log.info("jupyterlab: not started from JupyterHub (open the environment from the hub to run it)")
            return
        argv = singleuser_argv(Path(sys.executable).parent)
        self.launch(Plan("jupyterlab", lambda _port: argv), 0, child_environment(self.environ, hub=True))

    # the callback

    def callback(self) -> CallbackReply:
        """Tell the gateway where the services listen; connection errors and 5xx are retried, a 4xx is final."""
        ports = {s.name: s.port for s in self.services if s.port}
        payload = CallbackRequest(node=self.node(), host=self.host, services=ports)
        deadline = time.monotonic() + self.options.callback_timeout
        url = self.options.gateway + CALLBACK_PATH
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        attempt = 0
        # A plain-http gateway needs no TLS context: building httpx's default one (certifi's bundle) costs
        # 50-150 ms of the session's start-up, right before the callback.
        with httpx.Client(timeout=15, verify=url.startswith("https:")) as client:
            while True:
                self.check_alive()
                try:
                    response = client.post(url, content=msgspec.json.encode(payload), headers=headers)
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                else:
                    if response.is_success:
                        try:
                            return msgspec.json.decode(response.content, type=CallbackReply)
                        except msgspec.DecodeError as error:
                            raise SupervisorError(f"gateway's callback answer is unreadable: {error}") from None
                    if response.status_code < 500:
                        raise SupervisorError(
                            f"gateway refused the callback: {response.status_code} {_brief(response.text)}",
                            EXIT_REFUSED,
                        )
                    problem = f"{response.status_code} {_brief(response.text)}"
                if time.monotonic() > deadline:
                    raise SupervisorError(f"gateway did not take the callback in time: {problem}", EXIT_UNREACHABLE)
                delay = backoff(attempt)
                log.info("callback to %s failed (%s); retrying in %.0f s", url, problem, delay)
                if self.stop.wait(delay):
                    raise Stopped
                attempt += 1

    def node(self) -> str:
        name = self.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".", 1)[0]
        return name if _NODE.fullmatch(name) else "unknown"

    def check_alive(self) -> None:
        if self.stop.is_set():
            raise Stopped
        for service in self.services:
            if service.poll() is not None:
                raise SupervisorError(f"{service.name} (pid {service.pid}) exited with {service.returncode}")

    def apply(self, reply: CallbackReply) -> None:
        if "ssh" in self.options.services:
            text, dropped = authorized_keys_text(reply.authorized_keys)
            _write_private(self.options.state_dir / AUTHORIZED_KEYS, text)
            log.info("authorized keys: %d written, %d left out (not one line)", text.count("\n"), dropped)
        prefix = reply.tensorboard_path_prefix
        if prefix is not None and prefix != self.tensorboard_prefix and "tensorboard" in self.options.services:
            if not valid_prefix(prefix):
                log.info("ignored the gateway's TensorBoard prefix %r (not /a/b)", prefix)
                return
            old = next(s for s in self.services if s.name == "tensorboard")
            log.info("restarting tensorboard on port %d with the gateway's prefix %s", old.port, prefix)
            self.terminate([old])
            self.services.remove(old)
            self.tensorboard_prefix = prefix
            self.start([self.tensorboard_plan(port=old.port)])

    # running and stopping

    def terminate(self, services: Sequence[Service]) -> None:
        """SIGTERM to each service and all below it; SIGKILL to what is left after the grace period; reap."""
        for service in services:
            service.snapshot_tree()
            service.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.options.grace
        while not all(s.gone() for s in services) and time.monotonic() < deadline:
            time.sleep(0.05)
        for service in services:
            if not service.gone():
                log.info(
                    "%s (pid %d) still runs after %.0f s; killing it", service.name, service.pid, self.options.grace
                )
                service.signal_all(signal.SIGKILL)
        for service in services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.returncode = service.process.wait(timeout=5)

    def supervise(self) -> int:
        """Until the last service exits (1 if one failed) or a stop signal arrives (0)."""
        failed = False
        while True:
            self.wake.clear()  # a SIGCHLD or stop signal from here on ends the wait below
            if self.stop.is_set():
                return self.shutdown()
            for service in self.services:
                if service.returncode is None and service.poll() is not None:
                    code = service.returncode
                    log.info("%s (pid %d) exited with %s", service.name, service.pid, code)
                    failed = failed or code != 0
            if all(service.returncode is not None for service in self.services):
                log.info("the last service has exited; ending the session")
                self.terminate(self.services)  # what they left behind
                return EXIT_SERVICE if failed else EXIT_OK
            for service in self.services:
                if service.returncode is None:
                    service.snapshot_tree()  # a service that dies leaves its orphans known
            self.wake.wait(5)

    def shutdown(self) -> int:
        name = signal.Signals(self.stop_signal).name if self.stop_signal else "a stop"
        log.info("%s received; stopping %d service(s)", name, len(self.services))
        self.terminate(self.services)
        log.info("stopped")
        return EXIT_OK

    def run(self) -> int:
        self.install_signals()
        try:
            prepare_state_dir(self.options.state_dir)
            gateway_host, gateway_port = gateway_endpoint(self.options.gateway)
            deadline = time.monotonic() + self.options.callback_timeout
            self.host = local_address(gateway_host, gateway_port, deadline, self.stop)
            log.info("node %s, listening on %s (the gateway %s reaches it there)", self.node(), self.host, gateway_host)
            if "jupyterlab" in self.options.services:
                self.start_jupyterlab()  # first: the slowest to come up, and in parallel with the rest
            plans = {"ssh": self.ssh_plan, "tensorboard": self.tensorboard_plan}
            self.start([plans[name]() for name in self.options.services if name in plans])
            reply = self.callback()
            log.info("callback taken by the gateway")
            self.apply(reply)
            log.info("running: %s", ", ".join(f"{s.name} on port {s.port or '(its own)'}" for s in self.services))
        except Stopped:
            return self.shutdown()
        except SupervisorError as error:
            log.error("%s", error)
            self.terminate(self.services)
            return error.code
        except BaseException:
            self.terminate(self.services)
            raise
        return self.supervise()


def _brief(text: str, limit: int = 300) -> str:
    """A response body for one log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s remotegpu-session %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its own line per request; the callback logs its own
    options = _parse(argv)
    token = os.environ.pop(TOKEN_VARIABLE, "")
    if not token:
        log.error("%s is not set (the gateway gives it to the session's job)", TOKEN_VARIABLE)
        return EXIT_USAGE
    return Supervisor(options, token, dict(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main())
