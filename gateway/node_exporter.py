"""``remotegpu-node-exporter``: per-GPU Prometheus metrics of one node, read from NVML at scrape time.

It runs on each GPU node (the ``remotegpu.exporter`` Salt state installs it as a systemd unit) and imports only the
standard library, ``prometheus_client`` and ``pynvml`` (package ``nvidia-ml-py``), never the gateway's server stack.

    remotegpu-node-exporter [--listen 127.0.0.1] [--port 9835] [--interval 5] [--retry 30] [--log-level INFO]

``/metrics`` (any path but ``/favicon.ico``, prometheus_client's handler) answers from one NVML reading that is
reused for ``--interval`` seconds, so several scrapers (or a fast one) cost one NVML pass; ``--port 0`` picks a free
port, and the line ``listening on http://HOST:PORT/metrics`` on stderr says which.

Metrics (GPU labels: ``gpu`` index, ``uuid``, ``name`` the model, ``slurm_job`` and ``user``):

- ``remotegpu_node_nvml_up`` 1 when NVML answers, else 0 (library missing, driver not loaded, ...);
  ``remotegpu_node_nvml_info{driver_version,nvml_version}`` 1 while it does; ``remotegpu_node_gpus`` the count.
- ``remotegpu_node_gpu_up`` 1 per GPU read in full, 0 for a GPU that NVML lost (``GpuIsLost``) or could not
  name; a GPU at 0 carries no other metric in that reading.
- ``remotegpu_node_gpu_utilization_ratio``, ``remotegpu_node_gpu_memory_utilization_ratio`` (0..1, NVML's
  sample period), ``remotegpu_node_gpu_memory_used_bytes``, ``remotegpu_node_gpu_memory_total_bytes``,
  ``remotegpu_node_gpu_temperature_celsius``, ``remotegpu_node_gpu_power_watts``,
  ``remotegpu_node_gpu_power_limit_watts`` (enforced limit), ``remotegpu_node_gpu_ecc_errors_total{type}``
  (``corrected``/``uncorrected``, volatile: since the driver last loaded), ``remotegpu_node_gpu_processes``.
  What a GPU does not support (``NVMLError_NotSupported``, e.g. ECC on a consumer card or with ECC off) is left
  out for that GPU and not asked again; it is not an error.
- ``remotegpu_node_gpu_job_processes`` and ``remotegpu_node_gpu_job_memory_used_bytes`` per GPU and job (one
  series per job on a shared GPU); ``slurm_job=""`` gathers processes outside any Slurm job.
- ``remotegpu_node_nvml_read_seconds`` (the last NVML pass), ``remotegpu_node_nvml_errors_total{error}``
  (unexpected NVML errors, by class), and the exporter's own ``process_*`` metrics.

The labels are ``slurm_job``, not ``job``: Prometheus sets ``job`` on every scraped series (the scrape job) and would
rename ours to ``exported_job``. On a GPU metric ``slurm_job`` and ``user`` name the jobs and users with a process
on that GPU, comma-separated and sorted when several share it, empty when none.

Which Slurm job holds a GPU: NVML's running compute processes give host PIDs; ``/proc/<pid>/cgroup`` of each names
the job where Slurm confines jobs with cgroups (``TaskPlugin=task/cgroup`` or ``ProctrackType=proctrack/cgroup``):
cgroup v1 ``…:/slurm[_<node>]/uid_<uid>/job_<id>/step_<step>/…``, cgroup v2
``0::/system.slice/[<node>_]slurmstepd.scope/job_<id>/step_<step>/…`` (the id is the job's own: an array
task's job id, not ``<array>_<task>``). Without such a cgroup the process's
``SLURM_JOB_ID`` is read from ``/proc/<pid>/environ`` (Slurm's ``proctrack/linuxproc`` clusters); that needs root
or the same user, and a user can set that variable by hand, so it is a hint, not a proof. ``user`` is the owner of
``/proc/<pid>``. Limits: only GPUs with a live compute process show a job (an allocated but idle GPU shows none;
graphics-only and MPS-client processes are not listed); the exporter needs the host's PID namespace (a
containerised exporter without ``--pid=host`` sees no job); MIG instances are not broken out.

A node without NVML exports ``remotegpu_node_nvml_up 0``: the failure is logged once (again only if the reason
changes), and NVML is initialised again at most every ``--retry`` seconds, at a scrape; no traceback, no error loop.
If the driver goes away while running (``Uninitialized``/``DriverNotLoaded``, or any error counting the GPUs), NVML
is shut down and retried the same way. Exit codes: 0 on SIGTERM/SIGINT, 2 bad arguments or the port cannot be bound.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import pwd
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("remotegpu.node_exporter")

DEFAULT_PORT = 9835
GPU_LABELS = ("gpu", "uuid", "name", "slurm_job", "user")
JOB_LABELS = ("gpu", "uuid", "name", "slurm_job", "user")

# NVML error classes by name (pynvml generates them from NVML_ERROR_* at import), grouped by what they mean here.
_NVML_GONE = ("NVMLError_Uninitialized", "NVMLError_DriverNotLoaded", "NVMLError_LibraryNotFound",
              "NVMLError_LibRmVersionMismatch")  # fmt: skip
_GPU_LOST = ("NVMLError_GpuIsLost", "NVMLError_ResetRequired")


# ----------------------------------------------------------------------------------------------------------------
# Slurm job of a process: pure parsing plus a thin /proc reader


_JOB_COMPONENT = re.compile(r"job_(\d+)")


def slurm_job_from_cgroup(text: str) -> str | None:
    """The Slurm job id in a ``/proc/<pid>/cgroup`` text (cgroup v1, v2 or hybrid), or None.

    A ``job_<id>`` path component counts only below a Slurm component (``slurm``, ``slurm_<node>`` in v1,
    ``[<node>_]slurmstepd.scope`` in v2), so an unrelated cgroup that happens to be named ``job_1`` is not a job.
    """
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        components = parts[2].split("/")
        for i, component in enumerate(components):
            match = _JOB_COMPONENT.fullmatch(component)
            if match and any(_is_slurm_component(c) for c in components[:i]):
                return match.group(1)
    return None


def _is_slurm_component(component: str) -> bool:
    return component == "slurm" or component.startswith("slurm_") or component.endswith("slurmstepd.scope")


def slurm_job_from_environ(data: bytes) -> str | None:
    """``SLURM_JOB_ID`` from a ``/proc/<pid>/environ`` blob (NUL-separated), if it is a plain number."""
    for entry in data.split(b"\0"):
        if entry.startswith(b"SLURM_JOB_ID="):
            value = entry[len(b"SLURM_JOB_ID=") :].decode("ascii", "replace")
            return value if value.isdigit() else None
    return None


@dataclass(frozen=True)
class ProcessOwner:
    """Who a GPU process belongs to: its Slurm job (None outside Slurm) and user name (None if unreadable)."""

    job: str | None
    user: str | None


class ProcessResolver:
    """Maps PIDs to :class:`ProcessOwner` through ``/proc``; user names are cached, jobs are read each time."""

    def __init__(self, proc_root: Path = Path("/proc")) -> None:
        self.proc_root = proc_root
        self._users: dict[int, str] = {}

    def resolve(self, pid: int) -> ProcessOwner:
        base = self.proc_root / str(pid)
        job: str | None = None
        with contextlib.suppress(OSError):  # gone already, or another PID namespace: no job
            job = slurm_job_from_cgroup(base.joinpath("cgroup").read_text(errors="replace"))
        if job is None:
            with contextlib.suppress(OSError):  # environ is readable by root and the owner only
                job = slurm_job_from_environ(base.joinpath("environ").read_bytes())
        try:
            uid = base.stat().st_uid
        except OSError:
            return ProcessOwner(job, None)
        return ProcessOwner(job, self._user_name(uid))

    def _user_name(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name


# ----------------------------------------------------------------------------------------------------------------
# One NVML reading


@dataclass(frozen=True)
class JobUse:
    """One Slurm job's (or the non-Slurm processes') use of one GPU."""

    job: str  # "" outside Slurm
    user: str  # "" when unknown; comma-joined if processes of one job run as several users
    processes: int
    memory_bytes: float | None  # None when NVML reports no per-process memory


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    up: bool
    values: dict[str, float] = field(default_factory=dict)
    ecc: dict[str, float] = field(default_factory=dict)  # "corrected"/"uncorrected" -> volatile count
    jobs: tuple[JobUse, ...] = ()

    @property
    def job_label(self) -> str:
        return ",".join(sorted({j.job for j in self.jobs if j.job}))

    @property
    def user_label(self) -> str:
        users = {u for j in self.jobs for u in j.user.split(",") if u}
        return ",".join(sorted(users))


@dataclass(frozen=True)
class Snapshot:
    nvml_up: bool
    driver_version: str = ""
    nvml_version: str = ""
    gpus: tuple[GpuReading, ...] = ()
    read_seconds: float = 0.0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _GpuLost(Exception):
    """Internal: the GPU being read went away (GpuIsLost/ResetRequired)."""


class _NvmlGone(Exception):
    """Internal: NVML itself stopped answering (driver unloaded, uninitialised)."""


class NvmlReader:
    """Owns NVML's initialisation and turns one pass over the GPUs into a :class:`Snapshot`.

    ``nvml`` is the ``pynvml`` module (imported on first use when None); tests hand in a fake with the same
    functions and pynvml's own error classes. Not thread-safe: :class:`NvmlCollector` serialises calls.
    """

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        retry_seconds: float = 30.0,
        resolver: ProcessResolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._nvml: Any = nvml
        self.retry_seconds = retry_seconds
        self.resolver = resolver or ProcessResolver()
        self._clock = clock
        self._initialised = False
        self._next_attempt = float("-inf")
        self._last_failure: str | None = None
        self._driver_version = ""
        self._nvml_version = ""
        self._unsupported: dict[str, set[str]] = {}  # uuid -> reads NVML said NotSupported for
        self._known: dict[int, tuple[str, str]] = {}  # index -> (uuid, name) of the last good reading
        self._logged: set[tuple[str, str, str]] = set()  # (uuid, read, error) already logged
        self._down: set[int] = set()  # GPU indexes logged as unreadable, until they answer again
        self.errors: dict[str, int] = {}  # unexpected NVML errors by class name
        self.init_attempts = 0

    # -- NVML lifecycle

    def _module(self) -> Any:
        if self._nvml is None:
            # Imported late: without pynvml the exporter still starts and says nvml_up 0.
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def _classes(self, names: Sequence[str]) -> tuple[type[BaseException], ...]:
        nvml = self._nvml
        found = (getattr(nvml, n, None) for n in names)
        return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))

    def _ensure(self) -> bool:
        if self._initialised:
            return True
        now = self._clock()
        if now < self._next_attempt:
            return False
        self._next_attempt = now + self.retry_seconds
        self.init_attempts += 1
        try:
            nvml = self._module()
        except ImportError as exc:
            self._failed(f"pynvml is not installed ({exc})")
            return False
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._failed(f"NVML init failed: {type(exc).__name__}: {exc}")
            return False
        self._initialised = True
        self._driver_version = self._optional_text("nvmlSystemGetDriverVersion")
        self._nvml_version = self._optional_text("nvmlSystemGetNVMLVersion")
        log.info("NVML initialised: driver %s, NVML %s", self._driver_version or "?", self._nvml_version or "?")
        self._last_failure = None
        return True

    def _optional_text(self, function: str) -> str:
        nvml = self._nvml
        try:
            return _text(getattr(nvml, function)())
        except (nvml.NVMLError, AttributeError):
            return ""

    def _failed(self, reason: str) -> None:
        if reason != self._last_failure:
            log.warning("%s; exporting remotegpu_node_nvml_up 0, retrying at most every %gs", reason,
                        self.retry_seconds)  # fmt: skip
            self._last_failure = reason
        else:
            log.debug("%s (again)", reason)

    def _drop(self, exc: BaseException) -> None:
        """NVML stopped answering mid-run: shut it down; the next init waits for the retry interval."""
        self._initialised = False
        self._next_attempt = self._clock() + self.retry_seconds
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()
        self._failed(f"NVML stopped answering: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()

    # -- one pass

    def read(self) -> Snapshot:
        started = time.perf_counter()
        if not self._ensure():
            return Snapshot(nvml_up=False)
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
            gpus = tuple(self._read_gpu(i) for i in range(count))
        except _NvmlGone as exc:
            self._drop(exc.__cause__ or exc)
            return Snapshot(nvml_up=False)
        except nvml.NVMLError as exc:  # no GPU count at all: NVML is of no use until it is initialised again
            self._drop(exc)
            return Snapshot(nvml_up=False)
        return Snapshot(
            nvml_up=True,
            driver_version=self._driver_version,
            nvml_version=self._nvml_version,
            gpus=gpus,
            read_seconds=time.perf_counter() - started,
        )

    def _call(self, uuid: str, read: str, fn: Callable[[], Any]) -> Any:
        """Run one NVML read; None when unsupported or refused (logged once), raise _GpuLost/_NvmlGone."""
        nvml = self._nvml
        skipped = self._unsupported.setdefault(uuid, set())
        if read in skipped:
            return None
        try:
            return fn()
        except nvml.NVMLError as exc:
            if isinstance(exc, self._classes(_GPU_LOST)):
                raise _GpuLost(str(exc)) from exc
            if isinstance(exc, self._classes(_NVML_GONE)):
                raise _NvmlGone(str(exc)) from exc
            if isinstance(exc, self._classes(("NVMLError_NotSupported", "NVMLError_FunctionNotFound"))):
                skipped.add(read)
                log.debug("GPU %s: %s not supported, not asked again", uuid, read)
                return None
            self._count_error(exc, uuid, read)
            return None

    def _count_error(self, exc: BaseException, uuid: str = "", read: str = "") -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1
        key = (uuid, read, name)
        if key not in self._logged:
            self._logged.add(key)
            log.warning("NVML %s%s: %s: %s (logged once)", read or "read", f" of GPU {uuid}" if uuid else "", name,
                        exc)  # fmt: skip

    def _read_gpu(self, index: int) -> GpuReading:
        nvml = self._nvml
        known_uuid, known_name = self._known.get(index, ("", ""))
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            name = _text(nvml.nvmlDeviceGetName(handle))
        except nvml.NVMLError as exc:
            if isinstance(exc, self._classes(_NVML_GONE)):
                raise _NvmlGone(str(exc)) from exc
            self._gpu_down(index, exc)
            return GpuReading(index, known_uuid, known_name, up=False)
        try:
            reading = self._read_values(index, uuid, name, handle)
        except _GpuLost as exc:
            self._gpu_down(index, exc.__cause__ or exc)
            return GpuReading(index, uuid, name, up=False)
        if index in self._down:
            self._down.discard(index)
            log.info("GPU %d (%s) answers again", index, uuid)
        self._known[index] = (uuid, name)
        return reading

    def _gpu_down(self, index: int, exc: BaseException) -> None:
        if index not in self._down:
            self._down.add(index)
            log.warning("GPU %d unreadable: %s: %s; exporting remotegpu_node_gpu_up 0", index, type(exc).__name__,
                        exc)  # fmt: skip

    def _read_values(self, index: int, uuid: str, name: str, handle: Any) -> GpuReading:
        nvml = self._nvml
        values: dict[str, float] = {}
        ecc: dict[str, float] = {}

        util = self._call(uuid, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        if util is not None:
            values["utilization"] = util.gpu / 100.0
            values["memory_utilization"] = util.memory / 100.0
        memory = self._call(uuid, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        if memory is not None:
            values["memory_used"] = float(memory.used)
            values["memory_total"] = float(memory.total)
        temperature = self._call(
            uuid, "temperature", lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        )
        if temperature is not None:
            values["temperature"] = float(temperature)
        power = self._call(uuid, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        if power is not None:
            values["power"] = power / 1000.0  # NVML: milliwatts
        limit = self._call(uuid, "power_limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
        if limit is not None:
            values["power_limit"] = limit / 1000.0
        for kind, error_type in (
            ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            count = self._call(
                uuid,
                f"ecc_{kind}",
                functools.partial(nvml.nvmlDeviceGetTotalEccErrors, handle, error_type, nvml.NVML_VOLATILE_ECC),
            )
            if count is not None:
                ecc[kind] = float(count)
        processes = self._call(uuid, "processes", lambda: self._compute_processes(handle))
        jobs: tuple[JobUse, ...] = ()
        if processes is not None:
            values["processes"] = float(len(processes))
            jobs = self._jobs(processes)
        return GpuReading(index, uuid, name, up=True, values=values, ecc=ecc, jobs=jobs)

    def _compute_processes(self, handle: Any) -> Any:
        """pynvml calls the v3 function, which older drivers lack (FunctionNotFound); v2 there."""
        nvml = self._nvml
        try:
            return nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except self._classes(("NVMLError_FunctionNotFound",)):
            return nvml.nvmlDeviceGetComputeRunningProcesses_v2(handle)

    def _jobs(self, processes: Iterable[Any]) -> tuple[JobUse, ...]:
        by_job: dict[str, tuple[set[str], int, float | None]] = {}
        for process in processes:
            owner = self.resolver.resolve(int(process.pid))
            job = owner.job or ""
            users, count, memory = by_job.get(job, (set(), 0, None))
            if owner.user:
                users.add(owner.user)
            used = getattr(process, "usedGpuMemory", None)
            if used is not None:
                memory = (memory or 0.0) + float(used)
            by_job[job] = (users, count + 1, memory)
        return tuple(
            JobUse(job, ",".join(sorted(users)), count, memory)
            for job, (users, count, memory) in sorted(by_job.items())
        )


# ----------------------------------------------------------------------------------------------------------------
# Prometheus side


_GPU_GAUGES = (
    ("utilization", "remotegpu_node_gpu_utilization_ratio", "GPU busy fraction over NVML's last sample period"),
    ("memory_utilization", "remotegpu_node_gpu_memory_utilization_ratio", "Memory controller busy fraction"),
    ("memory_used", "remotegpu_node_gpu_memory_used_bytes", "GPU memory in use"),
    ("memory_total", "remotegpu_node_gpu_memory_total_bytes", "GPU memory installed"),
    ("temperature", "remotegpu_node_gpu_temperature_celsius", "GPU core temperature"),
    ("power", "remotegpu_node_gpu_power_watts", "Power draw"),
    ("power_limit", "remotegpu_node_gpu_power_limit_watts", "Enforced power limit"),
    ("processes", "remotegpu_node_gpu_processes", "Compute processes on the GPU"),
)


def snapshot_metrics(snapshot: Snapshot, errors: dict[str, int] | None = None) -> list[Metric]:
    """The metric families of one reading (pure: what a scrape answers for ``snapshot``)."""
    up = GaugeMetricFamily("remotegpu_node_nvml_up", "1 when NVML answers on this node, 0 otherwise")
    up.add_metric([], 1.0 if snapshot.nvml_up else 0.0)
    families: list[Metric] = [up]
    error_family = CounterMetricFamily(
        "remotegpu_node_nvml_errors", "Unexpected NVML errors (not NotSupported), by class", labels=["error"]
    )
    for name, n in sorted((errors or {}).items()):
        error_family.add_metric([name], float(n))
    families.append(error_family)
    if not snapshot.nvml_up:
        return families

    info = GaugeMetricFamily(
        "remotegpu_node_nvml_info", "NVIDIA driver and NVML versions", labels=["driver_version", "nvml_version"]
    )
    info.add_metric([snapshot.driver_version, snapshot.nvml_version], 1.0)
    count = GaugeMetricFamily("remotegpu_node_gpus", "GPUs NVML reports")
    count.add_metric([], float(len(snapshot.gpus)))
    read = GaugeMetricFamily("remotegpu_node_nvml_read_seconds", "Duration of the last NVML reading")
    read.add_metric([], snapshot.read_seconds)
    gpu_up = GaugeMetricFamily("remotegpu_node_gpu_up", "1 when the GPU was read, 0 when lost", labels=GPU_LABELS)
    gauges = {key: GaugeMetricFamily(metric, doc, labels=GPU_LABELS) for key, metric, doc in _GPU_GAUGES}
    ecc = CounterMetricFamily(
        "remotegpu_node_gpu_ecc_errors",
        "Volatile ECC errors since the driver loaded",
        labels=[*GPU_LABELS, "type"],
    )
    job_processes = GaugeMetricFamily(
        "remotegpu_node_gpu_job_processes", "Compute processes of a Slurm job on the GPU", labels=JOB_LABELS
    )
    job_memory = GaugeMetricFamily(
        "remotegpu_node_gpu_job_memory_used_bytes", "GPU memory used by a Slurm job's processes", labels=JOB_LABELS
    )
    for gpu in snapshot.gpus:
        labels = [str(gpu.index), gpu.uuid, gpu.name, gpu.job_label, gpu.user_label]
        gpu_up.add_metric(labels, 1.0 if gpu.up else 0.0)
        if not gpu.up:
            continue
        for key, value in gpu.values.items():
            gauges[key].add_metric(labels, value)
        for kind, value in sorted(gpu.ecc.items()):
            ecc.add_metric([*labels, kind], value)
        for use in gpu.jobs:
            job_labels = [str(gpu.index), gpu.uuid, gpu.name, use.job, use.user]
            job_processes.add_metric(job_labels, float(use.processes))
            if use.memory_bytes is not None:
                job_memory.add_metric(job_labels, use.memory_bytes)
    families += [info, count, read, gpu_up, *gauges.values(), ecc, job_processes, job_memory]
    return families


class NvmlCollector(Collector):
    """Answers each scrape from a reading at most ``cache_seconds`` old; one NVML pass at a time."""

    def __init__(
        self, reader: NvmlReader, *, cache_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reader = reader
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._taken = 0.0
        self._failures: set[str] = set()

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._clock()
            if self._snapshot is None or now - self._taken >= self.cache_seconds:
                self._snapshot = self._read()
                self._taken = now
            return self._snapshot

    def _read(self) -> Snapshot:
        try:
            return self.reader.read()
        except Exception as exc:
            # A bug or an NVML surprise must not turn /metrics into a 500 loop: nvml_up 0, logged once per message.
            message = f"{type(exc).__name__}: {exc}"
            if message not in self._failures:
                self._failures.add(message)
                log.exception("reading NVML failed (logged once)")
            return Snapshot(nvml_up=False)

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        yield from snapshot_metrics(snapshot, dict(self.reader.errors))


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {value!r}")
    return number


def _port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remotegpu-node-exporter", description="Prometheus metrics of this node's NVIDIA GPUs (NVML)."
    )
    parser.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)")
    parser.add_argument(
        "--interval", type=_positive, default=5.0, help="seconds one NVML reading serves scrapes (default 5; 0: none)"
    )
    parser.add_argument(
        "--retry", type=_positive, default=30.0, help="seconds between NVML init attempts when it fails (default 30)"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    reader = NvmlReader(retry_seconds=args.retry)
    collector = NvmlCollector(reader, cache_seconds=args.interval)
    registry = CollectorRegistry()
    registry.register(collector)
    ProcessCollector(registry=registry)
    collector.snapshot()  # init (and log its outcome) now, not at the first scrape
    try:
        server, thread = start_http_server(args.port, addr=args.listen, registry=registry)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.listen, args.port, exc)
        reader.close()
        return 2
    host, port = server.server_address[:2]
    log.info("listening on http://%s:%d/metrics", host, port)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
