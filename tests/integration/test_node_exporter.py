"""``remotegpu-node-exporter`` for real: the console script as a subprocess on a free 127.0.0.1 port, scraped over
HTTP and read with Prometheus' text parser. On a machine without NVIDIA's library (this one) that is the no-NVML
path: ``nvml_up 0``, one warning however many scrapes and init retries; where NVML answers, real GPU values."""

from __future__ import annotations

import functools
import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.node_exporter import ProcessOwner, ProcessResolver
from tests.waiting import eventually

pytestmark = pytest.mark.integration

SCRIPT = Path(sys.executable).parent / "remotegpu-node-exporter"
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)/metrics")


def nvml_here() -> bool:
    """Whether NVML answers on this machine: decides which path the exporter must report."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


class Exporter:
    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.stderr_path = tmp_path / "exporter.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [str(SCRIPT), "--listen", "127.0.0.1", *args], stdout=subprocess.DEVNULL, stderr=stderr
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def port(self) -> int:
        def listening() -> int | None:
            assert self.process.poll() is None, self.stderr
            match = LISTENING.search(self.stderr)
            return int(match.group(1)) if match else None

        return eventually(listening, within=30, every=0.1)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Exporter]:
    # Reading at most every 0.2 s and retrying NVML every second: the scrapes below cause several init attempts.
    running = Exporter(tmp_path, "--port", "0", "--interval", "0.2", "--retry", "1", "--log-level", "DEBUG")
    try:
        yield running
    finally:
        running.stop()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(response.text)
    }


def test_scrapes(exporter: Exporter) -> None:
    port = exporter.port()
    with_nvml = nvml_here()
    for _ in range(6):  # ~3.6 s: at least two more NVML init attempts where it is missing
        metrics = scrape(port)
        assert metrics["remotegpu_node_nvml_up"] == [({}, 1.0 if with_nvml else 0.0)]
        assert metrics["process_cpu_seconds"][0][1] > 0  # the exporter's own process metrics
        gpu_families = {name for name in metrics if name.startswith("remotegpu_node_gpu")}
        if with_nvml:
            (driver,) = metrics["remotegpu_node_nvml_info"]
            assert driver[0]["driver_version"]
            gpus = int(metrics["remotegpu_node_gpus"][0][1])
            assert gpus >= 1
            assert [v for _, v in metrics["remotegpu_node_gpu_up"]] == [1.0] * gpus
            assert all(v > 0 for _, v in metrics["remotegpu_node_gpu_memory_total_bytes"])
            assert all(0 <= v <= 1 for _, v in metrics["remotegpu_node_gpu_utilization_ratio"])
        else:
            assert gpu_families == set()
            assert "remotegpu_node_nvml_info" not in metrics
            assert metrics["remotegpu_node_nvml_errors"] == []
        time.sleep(0.6)

    assert exporter.stop() == 0
    stderr = exporter.stderr
    assert "Traceback" not in stderr, stderr
    assert " ERROR " not in stderr, stderr
    if not with_nvml:
        warnings = [line for line in stderr.splitlines() if " WARNING " in line]
        assert len(warnings) == 1, stderr
        assert "NVML init failed: NVMLError_LibraryNotFound" in warnings[0]
        assert stderr.count("(again)") >= 2, stderr  # it did retry, quietly
    assert "SIGTERM: stopping" in stderr


def test_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        second = Exporter(tmp_path, "--port", str(port), "--retry", "60")
        assert second.process.wait(timeout=30) == 2
    stderr = second.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


def test_bad_option_exits_2(tmp_path: Path) -> None:
    bad = Exporter(tmp_path, "--interval", "soon")
    assert bad.process.wait(timeout=30) == 2
    assert "--interval: not a number: 'soon'" in bad.stderr


def test_imports_only_the_standard_library_prometheus_client_and_pynvml() -> None:
    """So that a GPU node runs it without the gateway's server stack (litestar, SQLAlchemy, ...)."""
    program = (
        "import sys; before = set(sys.modules); import gateway.node_exporter as m; m.NvmlReader()._module(); "
        "new = {n.split('.')[0] for n in set(sys.modules) - before} - set(sys.stdlib_module_names); "
        "print(' '.join(sorted(new)))"
    )
    found = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    assert set(found.split()) == {"gateway", "prometheus_client", "pynvml"}


# ---------------------------------------------------------------------------------- Slurm job of a real process


def cgroup_mounts() -> tuple[Path | None, Path | None]:
    """A writable cgroup v1 hierarchy (the freezer's, or any) and the cgroup v2 mount, from /proc/mounts."""
    v1: Path | None = None
    v2: Path | None = None
    for line in Path("/proc/mounts").read_text().splitlines():
        _, where, kind, options, *_ = line.split()
        if kind == "cgroup2" and v2 is None:
            v2 = Path(where)
        elif kind == "cgroup" and (v1 is None or "freezer" in options.split(",")):
            v1 = Path(where)
    return v1, v2


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "120"], env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "31337"})
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def move_into(process: subprocess.Popen[bytes], top: Path, below: str) -> list[Path]:
    """Make ``top/below`` (a Slurm-like cgroup path) and move the process there; the made directories, deepest
    first, for the caller to remove once the process is gone."""
    made: list[Path] = []
    path = top
    for part in below.split("/"):
        path = path / part
        path.mkdir()
        made.insert(0, path)
    (path / "cgroup.procs").write_text(str(process.pid))
    return made


def remove(made: list[Path], process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()
    for directory in made:
        eventually(functools.partial(_rmdir, directory), within=10, every=0.1)


def _rmdir(directory: Path) -> bool:
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # the killed process may linger in it for a moment
    return True


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_job_of_a_real_process_from_its_cgroup(version: str, sleeper: subprocess.Popen[bytes]) -> None:
    v1, v2 = cgroup_mounts()
    top = v1 if version == "v1" else v2
    if os.geteuid() != 0 or top is None or not os.access(top, os.W_OK):
        pytest.skip(f"needs root and a writable cgroup {version} hierarchy")
    tag = f"rgputest{os.getpid()}"
    below = (
        f"slurm_{tag}/uid_0/job_4242/step_0"
        if version == "v1"
        else f"{tag}.slice/{tag}_slurmstepd.scope/job_4243/step_0/user/task_0"
    )
    made = move_into(sleeper, top, below)
    try:
        assert below in Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        # The cgroup wins over the SLURM_JOB_ID in the process's environment.
        expected = "4242" if version == "v1" else "4243"
        assert ProcessResolver().resolve(sleeper.pid) == ProcessOwner(expected, "root")
    finally:
        remove(made, sleeper)


def test_job_of_a_real_process_from_its_environment(sleeper: subprocess.Popen[bytes]) -> None:
    """``proctrack/linuxproc`` clusters (like the test cluster here) put jobs in no cgroup: SLURM_JOB_ID it is."""
    user = pwd.getpwuid(os.getuid()).pw_name
    assert ProcessResolver().resolve(sleeper.pid) == ProcessOwner("31337", user)
    own = os.environ.get("SLURM_JOB_ID")  # pytest itself: in no job, unless the suite runs inside one
    assert ProcessResolver().resolve(os.getpid()).job == (own if own and own.isdigit() else None)
