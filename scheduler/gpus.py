"""GPU discovery and telemetry: the one module that talks to NVML.

NVML starts only when something asks for a GPU. A field a card cannot report is None ("N/A"),
a card that dies is reported once through a callback, and a machine with no NVIDIA driver is a
normal state with a message, never a traceback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import pynvml

from results.records import GpuSample

log = logging.getLogger("autoresearch.gpus")

MAX_CPU_LANES = 64
_MIB = 1024 * 1024
_USAGE = "--gpus must be auto, cpu:N or GPU indices like 0,2,3"

# A card answers these for a field it does not have (or we may not read): "N/A", not a failure.
_UNSUPPORTED = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_NoPermission,
                pynvml.NVMLError_FunctionNotFound)
# After these the device answers nothing until someone resets it. We only ever pass valid
# constants, so an invalid argument (or a vanished index) means the handle itself is gone.
_LOST = (pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_ResetRequired,
         pynvml.NVMLError_InvalidArgument, pynvml.NVMLError_NotFound)

# Bit values are fixed by the NVML ABI and shared by the old "throttle" and new "clock event"
# names. GPU idle is left out on purpose: an idle card is not being held back.
_CLOCK_EVENTS = ((0x2, "app_clocks"), (0x4, "sw_power_cap"), (0x8, "hw_slowdown"),
                 (0x10, "sync_boost"), (0x20, "sw_thermal"), (0x40, "hw_thermal"),
                 (0x80, "hw_power_brake"), (0x100, "display_clocks"), (0x200, "board_limit"),
                 (0x400, "reliability"))
_GPU_IDLE = 0x1


class GpuSpecError(Exception):
    """Bad --gpus value or no GPU where one was asked for; the message is one sentence for the
    user (the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class Gpu:
    lane: int  # 0..n-1, the lane this device serves
    index: int | None  # NVML index (PCI bus order) = the CUDA_VISIBLE_DEVICES value; None on CPU
    uuid: str | None
    name: str  # NVML name, e.g. "NVIDIA H100 80GB HBM3"; "cpu" for CPU lanes
    memory_total_mb: float | None = None
    minor: int | None = None  # the card's device node is /dev/nvidia<minor> (the sandbox binds only it)
    node: str | None = None  # the host it is on, for a lane on a Ray cluster (None: this machine)

    @property
    def visible_devices(self) -> str:
        # An empty CUDA_VISIBLE_DEVICES hides every GPU, so a CPU lane cannot grab one by accident.
        return "" if self.index is None else str(self.index)

    @property
    def model(self) -> str:
        """The key results are compared under: numbers from different cards are not comparable."""
        return self.name if self.index is not None else "cpu"


@dataclass(frozen=True)
class GpuProcess:
    pid: int  # as the driver sees it: a host pid, which differs from ours inside a container
    used_memory_mb: float | None


# ---------------------------------------------------------------------------------- discovery

def discover(spec: str, nvml=None) -> list[Gpu]:
    """The lanes a --gpus value asks for: "auto" (every usable NVML GPU), "0,2,3" (those NVML
    indices, in that order) or "cpu:N" (N CPU lanes). Raises GpuSpecError with one sentence."""
    text = spec.strip().lower()
    if text.startswith("cpu:"):
        return _cpu_lanes(text[len("cpu:"):])
    if text == "auto":
        return _auto(nvml)
    parts = [p.strip() for p in text.split(",")]
    if not all(_is_number(p) for p in parts):
        raise GpuSpecError(f"{_USAGE}, not {spec!r}.")
    indices = [int(p) for p in parts]
    for index in indices:
        if indices.count(index) > 1:
            raise GpuSpecError(f"--gpus {spec}: GPU {index} is listed twice.")
    try:
        usable, unusable = _probe(nvml)
    except _NvmlUnavailable as err:
        raise GpuSpecError(f"--gpus {spec} names GPUs, but NVML is not available ({err}); "
                           "use --gpus cpu:N to run on the CPU.") from None
    by_index = {gpu.index: gpu for gpu in usable}
    lanes = []
    for lane, index in enumerate(indices):
        if index in unusable:
            raise GpuSpecError(f"--gpus {spec}: GPU {index} cannot be used ({unusable[index]}).")
        if index not in by_index:
            count = len(usable) + len(unusable)
            seen = {0: "no GPU", 1: "only GPU 0"}.get(count, f"GPUs 0-{count - 1}")
            raise GpuSpecError(f"--gpus {spec}: there is no GPU {index} (NVML sees {seen}).")
        lanes.append(replace(by_index[index], lane=lane))
    return lanes


def driver_version(nvml=None) -> str | None:
    """The NVIDIA driver's version ("580.65.06"), or None where there is none or it does not say."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        try:
            version = nvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no library, no driver: a normal state, not an error
        return None


def _cpu_lanes(count: str) -> list[Gpu]:
    if not _is_number(count) or not 1 <= int(count) <= MAX_CPU_LANES:
        raise GpuSpecError(f"--gpus cpu:N needs N between 1 and {MAX_CPU_LANES}, not {count!r}.")
    return [Gpu(lane=lane, index=None, uuid=None, name="cpu") for lane in range(int(count))]


def _auto(nvml) -> list[Gpu]:
    hint = "use --gpus cpu:N to run N lanes on the CPU"
    try:
        usable, unusable = _probe(nvml)
    except _NvmlUnavailable as err:
        message = f"No NVIDIA GPU was found (NVML not available: {err}); {hint}."
        raise GpuSpecError(message) from None
    for index, reason in unusable.items():
        log.warning("skipping GPU %d: %s", index, reason)
    if not usable:
        found = "NVML sees no devices" if not unusable else "none of them answers"
        raise GpuSpecError(f"No NVIDIA GPU was found ({found}); {hint}.")
    return [replace(gpu, lane=lane) for lane, gpu in enumerate(usable)]


class _NvmlUnavailable(Exception):
    pass


def _probe(nvml) -> tuple[list[Gpu], dict[int, str]]:
    """Every device NVML sees, in its (PCI bus) order, split into usable ones and the reasons
    the others are not. Lanes are placeholders; callers renumber them."""
    nvml = nvml if nvml is not None else pynvml
    try:
        nvml.nvmlInit()
    except Exception as err:  # no library, no driver, a driver/library mismatch, ...
        raise _NvmlUnavailable(_describe(err)) from None
    try:
        usable, unusable = [], {}
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = _text(_optional(nvml.nvmlDeviceGetName, handle)) or f"GPU {index}"
                uuid = _text(_optional(nvml.nvmlDeviceGetUUID, handle))
                memory = _optional(nvml.nvmlDeviceGetMemoryInfo, handle)
                minor = _optional(nvml.nvmlDeviceGetMinorNumber, handle) \
                    if hasattr(nvml, "nvmlDeviceGetMinorNumber") else None
            except pynvml.NVMLError as err:
                unusable[index] = _describe(err)
                continue
            total = memory.total / _MIB if memory is not None else None
            usable.append(Gpu(lane=index, index=index, uuid=uuid, name=name, memory_total_mb=total,
                              minor=minor if isinstance(minor, int) else None))
        return usable, unusable
    except pynvml.NVMLError as err:
        raise _NvmlUnavailable(_describe(err)) from None
    finally:
        # NVML counts inits, so this only undoes our own and leaves a running sampler alone.
        try:
            nvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown after discovery failed", exc_info=True)


def _optional(read, *args):
    try:
        return read(*args)
    except _UNSUPPORTED:
        return None


def _is_number(text: str) -> bool:
    # isdigit alone admits "²", which int() rejects.
    return text.isascii() and text.isdigit()


def _text(value) -> str | None:
    # Older nvidia-ml-py releases return bytes for names and UUIDs.
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _describe(err: BaseException) -> str:
    return str(err) or type(err).__name__


# ---------------------------------------------------------------------------------- telemetry

class _GpuLost(Exception):
    pass


class TelemetrySampler:
    """Samples every GPU lane about once a second on a daemon thread and hands each reading to
    `on_sample`; compute processes are read less often, since they change slowly and listing
    them costs the driver more. All NVML calls happen on that thread."""

    def __init__(self, gpus: list[Gpu], on_sample: Callable[[GpuSample], None],
                 on_lost: Callable[[Gpu, str], None], interval: float = 1.0,
                 process_interval: float = 5.0, nvml=None):
        self._gpus = [gpu for gpu in gpus if gpu.index is not None]
        self._on_sample = on_sample
        self._on_lost = on_lost
        self._interval = interval
        self._process_interval = process_interval
        self._nvml = nvml if nvml is not None else pynvml
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._message: str | None = None
        # Swapped whole by the sampling thread, so readers never see a half-built value.
        self._processes: dict[int, tuple[GpuProcess, ...]] = {}
        self._lost: set[int] = set()
        self._complained: set[int] = set()
        # A field a card said it lacks is not asked for again: every call holds a driver lock.
        self._unsupported: set[tuple[int, str]] = set()

    @property
    def message(self) -> str | None:
        """Why telemetry is unavailable, when it is; None while it works."""
        return self._message

    def processes(self, lane: int) -> tuple[GpuProcess, ...]:
        return self._processes.get(lane, ())

    def start(self) -> None:
        if not self._gpus or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="gpu-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is None:
            return
        # A wedged driver can block an NVML call for good; quitting must not wait on it.
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("GPU telemetry thread did not stop within %.0f s; leaving it", timeout)

    def _run(self) -> None:
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as err:  # whatever the reason, no NVML means no telemetry, not a crash
            self._message = f"NVML not available: {_describe(err)}"
            log.info("GPU telemetry off: %s", self._message)
            return
        try:
            handles = self._open_handles()
            next_tick = next_processes = time.monotonic()
            while handles and not self._stopping.is_set():
                read_processes = time.monotonic() >= next_processes
                if read_processes:
                    next_processes = time.monotonic() + self._process_interval
                for gpu, handle in list(handles.items()):
                    if not self._sample(gpu, handle, read_processes):
                        del handles[gpu]
                # A fixed cadence, not a fixed gap, so samples stay about one interval apart.
                next_tick = max(next_tick + self._interval, time.monotonic())
                self._stopping.wait(next_tick - time.monotonic())
            if not handles and not self._stopping.is_set():
                self._message = "No GPU left to sample."
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown after telemetry failed", exc_info=True)

    def _open_handles(self) -> dict:
        handles = {}
        for gpu in self._gpus:
            try:
                handles[gpu] = self._nvml.nvmlDeviceGetHandleByIndex(gpu.index)
            except _LOST as err:
                self._lose(gpu, err)
            except Exception:
                log.exception("no telemetry for GPU %d: NVML gave no handle", gpu.index)
        return handles

    def _sample(self, gpu: Gpu, handle, read_processes: bool) -> bool:
        """One reading of one GPU; False once the GPU is lost and must not be sampled again."""
        try:
            sample = self._read(gpu, handle)
            if read_processes:
                self._processes = {**self._processes, gpu.lane: self._read_processes(gpu, handle)}
            self._on_sample(sample)
        except _GpuLost as lost:
            self._lose(gpu, lost.__cause__)
            return False
        except Exception:
            # One broken card (or a bug in a consumer) must not silence the others; saying
            # it once per GPU keeps the log readable at one sample a second.
            if gpu.lane not in self._complained:
                self._complained.add(gpu.lane)
                log.exception("GPU %d telemetry failed; still sampling", gpu.index)
        return True

    def _read(self, gpu: Gpu, handle) -> GpuSample:
        nvml = self._nvml
        util = self._field(gpu, "util", nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._field(gpu, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", pynvml.NVML_TEMPERATURE_GPU)
        temp = self._field(gpu, "temp", nvml.nvmlDeviceGetTemperature, handle, sensor)
        power_mw = self._field(gpu, "power", nvml.nvmlDeviceGetPowerUsage, handle)
        clock_type = getattr(nvml, "NVML_CLOCK_SM", pynvml.NVML_CLOCK_SM)
        clock = self._field(gpu, "sm_clock", nvml.nvmlDeviceGetClockInfo, handle, clock_type)
        # The "throttle" call was renamed "clock events" in newer NVML; the old name goes away.
        reasons_fn = (getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                      or getattr(nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))
        reasons = self._field(gpu, "reasons", reasons_fn, handle) if reasons_fn else None
        total = memory.total / _MIB if memory is not None else gpu.memory_total_mb
        return GpuSample(
            t=datetime.now(timezone.utc).replace(tzinfo=None),
            gpu_index=gpu.index,
            gpu_uuid=gpu.uuid,
            util_pct=float(util.gpu) if util is not None else None,
            mem_used_mb=memory.used / _MIB if memory is not None else None,
            mem_total_mb=total,
            temp_c=float(temp) if temp is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            sm_clock_mhz=float(clock) if clock is not None else None,
            throttle_reasons=clock_event_names(reasons),
        )

    def _read_processes(self, gpu: Gpu, handle) -> tuple[GpuProcess, ...]:
        listing = self._nvml.nvmlDeviceGetComputeRunningProcesses
        found = self._field(gpu, "processes", listing, handle)
        return tuple(
            GpuProcess(pid=int(p.pid), used_memory_mb=(
                p.usedGpuMemory / _MIB if getattr(p, "usedGpuMemory", None) is not None else None))
            for p in found or ()
        )

    def _field(self, gpu: Gpu, key: str, read, *args):
        if (gpu.lane, key) in self._unsupported:
            return None
        try:
            return read(*args)
        except _UNSUPPORTED:
            self._unsupported.add((gpu.lane, key))
            return None
        except _LOST as err:
            raise _GpuLost() from err

    def _lose(self, gpu: Gpu, err: BaseException | None) -> None:
        if gpu.lane in self._lost:
            return
        self._lost.add(gpu.lane)
        self._processes = {lane: p for lane, p in self._processes.items() if lane != gpu.lane}
        reason = lost_reason(gpu, err)
        log.error("%s", reason)
        try:
            self._on_lost(gpu, reason)
        except Exception:
            log.exception("on_lost callback failed for GPU %d", gpu.index)


def lost_reason(gpu: Gpu, err: BaseException | None) -> str:
    """One sentence for the user on why a GPU stopped being usable."""
    card = f"GPU {gpu.index} ({gpu.name})"
    if isinstance(err, pynvml.NVMLError_GpuIsLost):
        return f"{card} is lost: it stopped answering the driver and needs a reset or a reboot."
    if isinstance(err, pynvml.NVMLError_ResetRequired):
        return f"{card} needs a GPU reset before it can be used again."
    detail = _describe(err) if err is not None else "no reason given"
    return f"{card} is no longer reachable through NVML ({detail})."


def clock_event_names(mask: int | None) -> str | None:
    """Readable names for the active clock-event (throttle) bits, e.g. "sw_power_cap,hw_slowdown";
    None when nothing holds the clocks back."""
    if not mask:
        return None
    mask &= ~_GPU_IDLE
    names = [name for bit, name in _CLOCK_EVENTS if mask & bit]
    unknown = mask & ~sum(bit for bit, _ in _CLOCK_EVENTS)
    if unknown:
        names.append(hex(unknown))
    return ",".join(names) or None
