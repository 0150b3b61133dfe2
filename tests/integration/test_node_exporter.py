"""``remotegpu-node-exporter`` for real: the console script as a subprocess on a free 127.0.0.1 port, scraped over
HTTP and read with Prometheus' text parser. On a machine without NVIDIA's library (this one) that is the no-NVML
path: ``nvml_up 0``, one warning however many scrapes and init retries; where NVML answers, real GPU values."""

from __future__ import annotations

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
