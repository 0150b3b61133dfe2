"""The NVML exporter against a small fake of the pynvml functions it calls (pynvml's own error classes and constants).

What a scrape answers is read back the way Prometheus reads it: rendered by prometheus_client and parsed with its
text parser.
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.node_exporter import (
    NvmlCollector,
    NvmlReader,
    ProcessOwner,
    ProcessResolver,
    Snapshot,
    build_parser,
    slurm_job_from_cgroup,
    slurm_job_from_environ,
)

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).parent / "samples"
LOGGER = "remotegpu.node_exporter"


# ---------------------------------------------------------------------------------------------------------- fakes


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H200"
    util: tuple[int, int] = (50, 20)  # percent, as NVML reports
    memory: tuple[int, int] = (2 * 2**30, 141 * 2**30)  # used, total bytes
    temperature: int = 41
    power_mw: int = 123_456
    limit_mw: int = 700_000
    ecc: tuple[int, int] | None = (3, 0)  # None: NotSupported
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, usedGpuMemory)
    errors: dict[str, BaseException] = field(default_factory=dict)  # function name -> error to raise


class FakeNvml:
    """The pynvml functions the exporter calls, over FakeGpu records; counts calls. Errors are pynvml's classes."""

    def __init__(self, gpus: list[FakeGpu], init_error: BaseException | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.count_error: BaseException | None = None
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVMLError", "NVML_")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    def _gpu(self, function: str, handle: int) -> FakeGpu:
        self.calls[function] += 1
        gpu = self.gpus[handle]
        error = gpu.errors.get(function)
        if error is not None:
            raise error
        return gpu

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlSystemGetNVMLVersion(self) -> bytes:
        return b"12.570.86.15"

    def nvmlDeviceGetCount(self) -> int:
        self.calls["nvmlDeviceGetCount"] += 1
        if self.count_error is not None:
            raise self.count_error
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._gpu("nvmlDeviceGetHandleByIndex", index)
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self._gpu("nvmlDeviceGetName", handle).name.encode()  # older pynvml answers bytes

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        gpu, memory = self._gpu("nvmlDeviceGetUtilizationRates", handle).util
        return SimpleNamespace(gpu=gpu, memory=memory)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        used, total = self._gpu("nvmlDeviceGetMemoryInfo", handle).memory
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._gpu("nvmlDeviceGetTemperature", handle).temperature

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        return self._gpu("nvmlDeviceGetEnforcedPowerLimit", handle).limit_mw

    def nvmlDeviceGetTotalEccErrors(self, handle: int, error_type: int, counter_type: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEccErrors", handle)
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        if gpu.ecc is None:
            raise pynvml.NVMLError_NotSupported()
        return gpu.ecc[0] if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else gpu.ecc[1]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: int) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses_v2", handle)
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MapResolver(ProcessResolver):
    """PIDs to owners from a dict (the /proc side has its own tests below)."""

    def __init__(self, owners: dict[int, ProcessOwner]) -> None:
        super().__init__()
        self.owners = owners

    def resolve(self, pid: int) -> ProcessOwner:
        return self.owners.get(pid, ProcessOwner(None, None))


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(collector: NvmlCollector) -> Samples:
    """What Prometheus would read from one scrape: {(sample name, labels): value}."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def values(samples: Samples, metric: str, /, **match: str) -> list[float]:
    return [v for (n, labels), v in samples.items() if n == metric and set(match.items()) <= labels]


def labels_of(samples: Samples, metric: str, /, **match: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels), _ in samples.items() if n == metric and set(match.items()) <= labels]


def make(
    nvml: FakeNvml, owners: dict[int, ProcessOwner] | None = None, *, retry: float = 30.0, cache: float = 0.0
) -> tuple[NvmlCollector, FakeClock]:
    clock = FakeClock()
    reader = NvmlReader(nvml, retry_seconds=retry, resolver=MapResolver(owners or {}), clock=clock)
    return NvmlCollector(reader, cache_seconds=cache, clock=clock), clock


# ---------------------------------------------------------------------------------------------- cgroup and /proc


@pytest.mark.parametrize(
    ("sample", "job"),
    [
        ("cgroup_v1_slurm.txt", "4242"),
        ("cgroup_v1_multiple_slurmd.txt", "77"),
        ("cgroup_v2_slurm.txt", "1234"),
        ("cgroup_v2_multiple_slurmd.txt", "98765"),
        ("cgroup_v2_slurmstepd_itself.txt", None),
        ("cgroup_v2_docker.txt", None),
        ("cgroup_not_slurm_job_name.txt", None),
    ],
)
def test_slurm_job_from_cgroup_samples(sample: str, job: str | None) -> None:
    assert slurm_job_from_cgroup((SAMPLES / sample).read_text()) == job


@pytest.mark.parametrize("text", ["", "garbage without colons\n", "0::/\n", "0::/slurm\n", "3:memory:/slurm/job_x/\n"])
def test_slurm_job_from_cgroup_nothing(text: str) -> None:
    assert slurm_job_from_cgroup(text) is None


def test_slurm_job_from_environ() -> None:
    assert slurm_job_from_environ(b"PATH=/bin\0SLURM_JOB_ID=31\0SLURM_JOB_USER=ann\0") == "31"
    assert slurm_job_from_environ(b"PATH=/bin\0SLURM_JOBID=31\0") is None
    assert slurm_job_from_environ(b"SLURM_JOB_ID=31;rm -rf /\0") is None
    assert slurm_job_from_environ(b"") is None


def fake_proc(root: Path, pid: int, cgroup: str | None, environ: bytes | None = None) -> None:
    base = root / str(pid)
    base.mkdir()
    if cgroup is not None:
        (base / "cgroup").write_text(cgroup)
    if environ is not None:
        (base / "environ").write_bytes(environ)


def test_process_resolver_reads_proc(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    fake_proc(tmp_path, 10, (SAMPLES / "cgroup_v2_slurm.txt").read_text(), b"SLURM_JOB_ID=999\0")
    fake_proc(tmp_path, 11, "0::/user.slice\n", b"SLURM_JOB_ID=55\0HOME=/root\0")  # linuxproc: environ only
    fake_proc(tmp_path, 12, "0::/user.slice\n")  # no environ readable
    resolver = ProcessResolver(tmp_path)
    assert resolver.resolve(10) == ProcessOwner("1234", me)  # the cgroup wins over the environment
    assert resolver.resolve(11) == ProcessOwner("55", me)
    assert resolver.resolve(12) == ProcessOwner(None, me)
    assert resolver.resolve(13) == ProcessOwner(None, None)  # exited between NVML's list and /proc


def test_process_resolver_unknown_uid_is_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_proc(tmp_path, 20, "0::/\n")

    def no_user(uid: int) -> Any:
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_user)
    assert ProcessResolver(tmp_path).resolve(20) == ProcessOwner(None, str(os.getuid()))


# ----------------------------------------------------------------------------------------------------- readings


def test_values_units_and_labels() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a"), FakeGpu("GPU-b", name="NVIDIA A100-SXM4-80GB", util=(100, 0))])
    samples = scrape(make(nvml)[0])
    assert values(samples, "remotegpu_node_nvml_up") == [1.0]
    assert labels_of(samples, "remotegpu_node_nvml_info") == [
        {"driver_version": "570.86.15", "nvml_version": "12.570.86.15"}
    ]
    assert values(samples, "remotegpu_node_gpus") == [2.0]
    a = {"gpu": "0", "uuid": "GPU-a", "name": "NVIDIA H200", "slurm_job": "", "user": ""}
    assert values(samples, "remotegpu_node_gpu_up", **a) == [1.0]
    assert values(samples, "remotegpu_node_gpu_utilization_ratio", **a) == [0.5]
    assert values(samples, "remotegpu_node_gpu_memory_utilization_ratio", **a) == [0.2]
    assert values(samples, "remotegpu_node_gpu_memory_used_bytes", **a) == [2 * 2**30]
    assert values(samples, "remotegpu_node_gpu_memory_total_bytes", **a) == [141 * 2**30]
    assert values(samples, "remotegpu_node_gpu_temperature_celsius", **a) == [41.0]
    assert values(samples, "remotegpu_node_gpu_power_watts", **a) == [123.456]
    assert values(samples, "remotegpu_node_gpu_power_limit_watts", **a) == [700.0]
    assert values(samples, "remotegpu_node_gpu_ecc_errors_total", uuid="GPU-a", type="corrected") == [3.0]
    assert values(samples, "remotegpu_node_gpu_ecc_errors_total", uuid="GPU-a", type="uncorrected") == [0.0]
    assert values(samples, "remotegpu_node_gpu_processes", **a) == [0.0]
    assert values(samples, "remotegpu_node_gpu_utilization_ratio", gpu="1", name="NVIDIA A100-SXM4-80GB") == [1.0]
    assert values(samples, "remotegpu_node_gpu_job_processes") == []
    assert values(samples, "remotegpu_node_nvml_errors_total") == []


def test_jobs_per_gpu() -> None:
    gpus = [
        FakeGpu("GPU-a", processes=[(100, 1000), (101, 500), (200, None)]),  # two processes of job 7, one of 8
        FakeGpu("GPU-b", processes=[(300, 4096)]),  # a process outside Slurm
        FakeGpu("GPU-c", processes=[(400, None)]),  # job 9, no per-process memory from NVML
    ]
    owners = {
        100: ProcessOwner("7", "ann"),
        101: ProcessOwner("7", "ann"),
        200: ProcessOwner("8", "bob"),
        300: ProcessOwner(None, "root"),
        400: ProcessOwner("9", "cy"),
    }
    samples = scrape(make(FakeNvml(gpus), owners)[0])
    # A GPU's own metrics name every job and user on it.
    assert labels_of(samples, "remotegpu_node_gpu_memory_used_bytes", uuid="GPU-a")[0]["slurm_job"] == "7,8"
    assert labels_of(samples, "remotegpu_node_gpu_memory_used_bytes", uuid="GPU-a")[0]["user"] == "ann,bob"
    assert values(samples, "remotegpu_node_gpu_processes", uuid="GPU-a", slurm_job="7,8") == [3.0]
    assert labels_of(samples, "remotegpu_node_gpu_up", uuid="GPU-b")[0]["slurm_job"] == ""
    assert labels_of(samples, "remotegpu_node_gpu_up", uuid="GPU-b")[0]["user"] == "root"
    # One series per job and GPU.
    assert values(samples, "remotegpu_node_gpu_job_processes", uuid="GPU-a", slurm_job="7", user="ann") == [2.0]
    assert values(samples, "remotegpu_node_gpu_job_memory_used_bytes", uuid="GPU-a", slurm_job="7") == [1500.0]
    assert values(samples, "remotegpu_node_gpu_job_processes", uuid="GPU-a", slurm_job="8", user="bob") == [1.0]
    assert values(samples, "remotegpu_node_gpu_job_memory_used_bytes", uuid="GPU-a", slurm_job="8") == []
    assert values(samples, "remotegpu_node_gpu_job_processes", uuid="GPU-b", slurm_job="", user="root") == [1.0]
    assert values(samples, "remotegpu_node_gpu_job_memory_used_bytes", uuid="GPU-b") == [4096.0]
    assert values(samples, "remotegpu_node_gpu_job_processes", uuid="GPU-c", slurm_job="9") == [1.0]
    assert values(samples, "remotegpu_node_gpu_job_memory_used_bytes", uuid="GPU-c") == []


def test_not_supported_is_skipped_for_that_gpu_and_not_asked_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    no_power = FakeGpu(
        "GPU-b",
        ecc=None,
        errors={
            "nvmlDeviceGetPowerUsage": pynvml.NVMLError_NotSupported(),
            "nvmlDeviceGetEnforcedPowerLimit": pynvml.NVMLError_NotSupported(),
        },
    )
    nvml = FakeNvml([FakeGpu("GPU-a"), no_power])
    collector, _ = make(nvml)
    for _ in range(3):
        samples = scrape(collector)
        assert values(samples, "remotegpu_node_gpu_up") == [1.0, 1.0]
        assert values(samples, "remotegpu_node_gpu_power_watts", uuid="GPU-a") == [123.456]
        assert values(samples, "remotegpu_node_gpu_power_watts", uuid="GPU-b") == []
        assert values(samples, "remotegpu_node_gpu_power_limit_watts", uuid="GPU-b") == []
        assert values(samples, "remotegpu_node_gpu_ecc_errors_total", uuid="GPU-b") == []
        assert len(values(samples, "remotegpu_node_gpu_ecc_errors_total", uuid="GPU-a")) == 2
        assert values(samples, "remotegpu_node_gpu_temperature_celsius", uuid="GPU-b") == [41.0]
        assert values(samples, "remotegpu_node_nvml_errors_total") == []
    # GPU-a asked at each of the 3 readings; GPU-b once per read, then remembered as unsupported.
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 3 + 1
    assert nvml.calls["nvmlDeviceGetTotalEccErrors"] == 3 * 2 + 2  # corrected and uncorrected
    assert caplog.records == []


def test_gpu_lost_mid_scrape(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    flaky = FakeGpu("GPU-b")
    nvml = FakeNvml([FakeGpu("GPU-a"), flaky, FakeGpu("GPU-c")])
    collector, _ = make(nvml)
    assert values(scrape(collector), "remotegpu_node_gpu_up") == [1.0, 1.0, 1.0]

    # Utilisation answered, then the GPU fell off the bus: none of its half-read values are exported.
    flaky.errors["nvmlDeviceGetMemoryInfo"] = pynvml.NVMLError_GpuIsLost()
    for _ in range(2):
        samples = scrape(collector)
        assert values(samples, "remotegpu_node_nvml_up") == [1.0]
        assert values(samples, "remotegpu_node_gpu_up", uuid="GPU-b", gpu="1") == [0.0]
        assert values(samples, "remotegpu_node_gpu_utilization_ratio", uuid="GPU-b") == []
        assert values(samples, "remotegpu_node_gpu_up", uuid="GPU-a") == [1.0]
        assert values(samples, "remotegpu_node_gpu_memory_total_bytes", uuid="GPU-c") == [141 * 2**30]
        assert values(samples, "remotegpu_node_nvml_errors_total") == []

    # Lost before it could even be named: the labels of its last good reading.
    flaky.errors["nvmlDeviceGetHandleByIndex"] = pynvml.NVMLError_GpuIsLost()
    samples = scrape(collector)
    assert labels_of(samples, "remotegpu_node_gpu_up", gpu="1") == [
        {"gpu": "1", "uuid": "GPU-b", "name": "NVIDIA H200", "slurm_job": "", "user": ""}
    ]
    assert values(samples, "remotegpu_node_gpu_up", gpu="1") == [0.0]

    flaky.errors.clear()
    assert values(scrape(collector), "remotegpu_node_gpu_up") == [1.0, 1.0, 1.0]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("GPU 1 unreadable" in m for m in messages) == 1, messages
    assert sum("GPU 1 (GPU-b) answers again" in m for m in messages) == 1, messages


def test_other_nvml_errors_skip_the_metric_and_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    gpu = FakeGpu("GPU-a", errors={"nvmlDeviceGetTemperature": pynvml.NVMLError_NoPermission()})
    collector, _ = make(FakeNvml([gpu]))
    scrape(collector)
    samples = scrape(collector)
    assert values(samples, "remotegpu_node_gpu_temperature_celsius") == []
    assert values(samples, "remotegpu_node_gpu_power_watts") == [123.456]
    assert values(samples, "remotegpu_node_nvml_errors_total", error="NVMLError_NoPermission") == [2.0]
    assert len(caplog.records) == 1
    assert "temperature of GPU GPU-a: NVMLError_NoPermission" in caplog.records[0].getMessage()


def test_processes_fall_back_to_v2_on_old_drivers() -> None:
    gpu = FakeGpu(
        "GPU-a",
        processes=[(100, 10)],
        errors={"nvmlDeviceGetComputeRunningProcesses": pynvml.NVMLError_FunctionNotFound()},
    )
    nvml = FakeNvml([gpu])
    samples = scrape(make(nvml, {100: ProcessOwner("5", "ann")})[0])
    assert values(samples, "remotegpu_node_gpu_job_processes", slurm_job="5") == [1.0]
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 1


# ------------------------------------------------------------------------------------------------ without NVML


@pytest.mark.parametrize(
    "error", [pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded, pynvml.NVMLError_Unknown]
)
def test_no_nvml_up_0_logged_once_retried_at_interval(
    error: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    nvml = FakeNvml([FakeGpu("GPU-a")], init_error=error())
    collector, clock = make(nvml, retry=30.0)
    for step in range(10):  # 10 scrapes, 5 s apart: 50 s -> attempts at 0 and 30 s
        samples = scrape(collector)
        assert values(samples, "remotegpu_node_nvml_up") == [0.0]
        assert {n for n, _ in samples} == {"remotegpu_node_nvml_up"}, step  # nothing else, no error series
        clock.now += 5
    assert nvml.calls["nvmlInit"] == 2
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert error.__name__ in warnings[0].getMessage()
    assert warnings[0].exc_info is None

    nvml.init_error = None  # the driver got installed
    clock.now += 30
    samples = scrape(collector)
    assert values(samples, "remotegpu_node_nvml_up") == [1.0]
    assert values(samples, "remotegpu_node_gpu_up", uuid="GPU-a") == [1.0]
    assert any("NVML initialised: driver 570.86.15" in r.getMessage() for r in caplog.records)


def test_no_pynvml_at_all(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    clock = FakeClock()
    collector = NvmlCollector(NvmlReader(retry_seconds=10, clock=clock), cache_seconds=0, clock=clock)
    for _ in range(3):
        assert values(scrape(collector), "remotegpu_node_nvml_up") == [0.0]
        clock.now += 20
    assert len(caplog.records) == 1
    assert "pynvml is not installed" in caplog.records[0].getMessage()


def test_driver_gone_mid_run_shuts_down_and_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    nvml = FakeNvml([FakeGpu("GPU-a")])
    collector, clock = make(nvml, retry=30.0)
    assert values(scrape(collector), "remotegpu_node_nvml_up") == [1.0]

    nvml.count_error = pynvml.NVMLError_DriverNotLoaded()
    nvml.init_error = pynvml.NVMLError_DriverNotLoaded()
    assert values(scrape(collector), "remotegpu_node_nvml_up") == [0.0]
    assert nvml.calls["nvmlShutdown"] == 1
    clock.now += 10
    assert values(scrape(collector), "remotegpu_node_nvml_up") == [0.0]
    assert nvml.calls["nvmlInit"] == 1  # not retried before 30 s

    clock.now += 20
    assert values(scrape(collector), "remotegpu_node_nvml_up") == [0.0]
    assert nvml.calls["nvmlInit"] == 2  # 30 s after the loss

    nvml.count_error = nvml.init_error = None
    clock.now += 29
    assert values(scrape(collector), "remotegpu_node_nvml_up") == [0.0]
    clock.now += 1
    assert values(scrape(collector), "remotegpu_node_nvml_up") == [1.0]
    assert nvml.calls["nvmlInit"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # stopped answering; then the init failure (another reason), each once
    assert "NVML stopped answering: NVMLError_DriverNotLoaded" in messages[0]
    assert "NVML init failed: NVMLError_DriverNotLoaded" in messages[1]

    # Lost while reading one GPU's values: the whole reading is down, not a half-read GPU.
    nvml.gpus[0].errors["nvmlDeviceGetPowerUsage"] = pynvml.NVMLError_Uninitialized()
    assert values(scrape(collector), "remotegpu_node_nvml_up") == [0.0]
    assert nvml.calls["nvmlShutdown"] == 2
    assert values(scrape(collector), "remotegpu_node_nvml_up") == [0.0]  # and waits out the retry interval
    assert nvml.calls["nvmlInit"] == 3


def test_any_error_counting_gpus_is_nvml_down() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a")])
    collector, clock = make(nvml, retry=30.0)
    nvml.count_error = pynvml.NVMLError_Unknown()
    samples = scrape(collector)
    assert values(samples, "remotegpu_node_nvml_up") == [0.0]
    assert values(samples, "remotegpu_node_gpus") == []  # not "0 GPUs"
    assert nvml.calls["nvmlShutdown"] == 1
    nvml.count_error = None
    clock.now += 30
    assert values(scrape(collector), "remotegpu_node_gpus") == [1.0]


# ------------------------------------------------------------------------------------------------ the collector


def test_cache_serves_scrapes_from_one_reading() -> None:
    nvml = FakeNvml([FakeGpu("GPU-a")])
    collector, clock = make(nvml, cache=5.0)
    for _ in range(4):
        scrape(collector)
        clock.now += 1
    assert nvml.calls["nvmlDeviceGetCount"] == 1
    clock.now += 1  # 5 s after the first reading
    scrape(collector)
    assert nvml.calls["nvmlDeviceGetCount"] == 2


def test_a_failing_reader_answers_nvml_up_0_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(NvmlReader):
        def read(self) -> Snapshot:
            raise ValueError("surprise")

    caplog.set_level(logging.ERROR, LOGGER)
    collector = NvmlCollector(Broken(FakeNvml([])), cache_seconds=0)
    for _ in range(3):
        assert values(scrape(collector), "remotegpu_node_nvml_up") == [0.0]
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None


@pytest.mark.parametrize(
    "argv", [["--port", "70000"], ["--port", "-1"], ["--port", "x"], ["--interval", "-1"], ["--retry", "nan"]]
)
def test_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(argv)
    assert raised.value.code == 2


def test_defaults() -> None:
    args = build_parser().parse_args([])
    assert (args.listen, args.port, args.interval, args.retry) == ("127.0.0.1", 9835, 5.0, 30.0)
