"""GPU discovery and telemetry, driven without a GPU: a small stand-in for the pynvml module
answers (or raises pynvml's real error classes) the way a driver would."""

import logging
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml
import pytest

from scheduler.gpus import (
    Gpu,
    GpuProcess,
    GpuSpecError,
    TelemetrySampler,
    clock_event_names,
    discover,
)

MIB = 1024 * 1024


@dataclass
class FakeCard:
    name: str | bytes = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-0000"
    minor: int = 0  # /dev/nvidia<minor>
    util: int = 97
    used_mb: int = 40_000
    total_mb: int = 81_559
    temp: int = 61
    power_mw: int = 512_345
    sm_clock: int = 1980
    reasons: int = 0x4 | 0x8
    processes: list = field(default_factory=list)
    unsupported: set = field(default_factory=set)  # field names answered with NotSupported
    lost_error: type | None = None  # once set, every call raises it
    lose_after: int | None = None  # then lost_error is set after this many utilisation reads
    loss: type = pynvml.NVMLError_GpuIsLost
    broken: Exception | None = None  # raised by the utilisation read, like a bug would be
    calls: dict = field(default_factory=dict)

    def answer(self, key, value):
        self.calls[key] = self.calls.get(key, 0) + 1
        if key == "util" and self.lose_after is not None and self.calls[key] > self.lose_after:
            self.lost_error = self.loss
        if self.lost_error is not None:
            raise self.lost_error()
        if key in self.unsupported:
            raise pynvml.NVMLError_NotSupported()
        if key == "util" and self.broken is not None:
            raise self.broken
        return value


class FakeNvml:
    """The pynvml functions scheduler.gpus calls; a handle is the card's index."""

    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM

    def __init__(self, *cards, init_error=None):
        self.cards = list(cards)
        self.init_error = init_error
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error()
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.cards):
            raise pynvml.NVMLError_InvalidArgument()
        return index

    def nvmlDeviceGetName(self, h):
        return self.cards[h].answer("name", self.cards[h].name)

    def nvmlDeviceGetUUID(self, h):
        return self.cards[h].answer("uuid", self.cards[h].uuid)

    def nvmlDeviceGetMinorNumber(self, h):
        return self.cards[h].answer("minor", self.cards[h].minor)

    def nvmlDeviceGetMemoryInfo(self, h):
        card = self.cards[h]
        info = SimpleNamespace(total=card.total_mb * MIB, used=card.used_mb * MIB,
                               free=(card.total_mb - card.used_mb) * MIB)
        return card.answer("memory", info)

    def nvmlDeviceGetUtilizationRates(self, h):
        return self.cards[h].answer("util", SimpleNamespace(gpu=self.cards[h].util, memory=30))

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self.cards[h].answer("temp", self.cards[h].temp)

    def nvmlDeviceGetPowerUsage(self, h):
        return self.cards[h].answer("power", self.cards[h].power_mw)

    def nvmlDeviceGetClockInfo(self, h, clock):
        assert clock == pynvml.NVML_CLOCK_SM
        return self.cards[h].answer("sm_clock", self.cards[h].sm_clock)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.cards[h].answer("reasons", self.cards[h].reasons)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        procs = [SimpleNamespace(pid=p, usedGpuMemory=mem) for p, mem in self.cards[h].processes]
        return self.cards[h].answer("processes", procs)


def wait_for(predicate, limit=5.0):
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "the sampler never got there"
        time.sleep(0.005)


class Recorder:
    def __init__(self):
        self.samples, self.lost = [], []

    def on_sample(self, sample):
        self.samples.append(sample)

    def on_lost(self, gpu, reason):
        self.lost.append((gpu, reason))

    def of(self, index):
        return [s for s in self.samples if s.gpu_index == index]


def sampler_for(nvml, gpus, recorder, **kwargs):
    kwargs.setdefault("interval", 0.01)
    return TelemetrySampler(gpus, recorder.on_sample, recorder.on_lost, nvml=nvml, **kwargs)


def gpu(lane, index=None, name="NVIDIA H100 80GB HBM3"):
    index = lane if index is None else index
    return Gpu(lane=lane, index=index, uuid=f"GPU-{index:04d}", name=name)


# ------------------------------------------------------------------------------ --gpus values

def test_cpu_spec_makes_that_many_cpu_lanes():
    lanes = discover("cpu:3")
    assert [g.lane for g in lanes] == [0, 1, 2]
    assert all(g.index is None and g.uuid is None and g.name == "cpu" for g in lanes)


@pytest.mark.parametrize("spec", ["", "gpu", "cpu", "cpu:", "cpu:0", "cpu:65", "cpu:x", "cpu:-1",
                                  "0,,1", "-1", "1.5", "0;1", "²"])
def test_malformed_specs_are_a_user_error(spec):
    with pytest.raises(GpuSpecError) as caught:
        discover(spec, nvml=FakeNvml(FakeCard(), FakeCard()))
    assert "\n" not in str(caught.value)


def skip_if_a_driver_is_present():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return
    pynvml.nvmlShutdown()
    pytest.skip("this machine has an NVIDIA driver")


def test_auto_without_a_driver_says_so_and_suggests_cpu_lanes():
    skip_if_a_driver_is_present()
    with pytest.raises(GpuSpecError, match=r"No NVIDIA GPU was found .*--gpus cpu:N"):
        discover("auto")


def test_auto_when_nvml_finds_no_devices_is_a_user_error():
    with pytest.raises(GpuSpecError, match="No NVIDIA GPU was found"):
        discover("auto", nvml=FakeNvml())


def test_indices_without_nvml_are_a_user_error():
    nvml = FakeNvml(init_error=pynvml.NVMLError_LibraryNotFound)
    with pytest.raises(GpuSpecError, match=r"NVML is not available .*cpu:N"):
        discover("0,1", nvml=nvml)


def test_auto_finds_every_gpu_in_nvml_order_and_releases_nvml():
    nvml = FakeNvml(FakeCard(uuid="GPU-a"), FakeCard(name=b"NVIDIA A100-SXM4-80GB", uuid="GPU-b"))
    lanes = discover("auto", nvml=nvml)
    assert [(g.lane, g.index, g.uuid) for g in lanes] == [(0, 0, "GPU-a"), (1, 1, "GPU-b")]
    assert lanes[1].name == "NVIDIA A100-SXM4-80GB"
    assert lanes[0].memory_total_mb == 81_559
    assert nvml.inits == nvml.shutdowns == 1


def test_auto_skips_a_gpu_that_does_not_answer():
    nvml = FakeNvml(FakeCard(lost_error=pynvml.NVMLError_GpuIsLost), FakeCard())
    assert [(g.lane, g.index) for g in discover("auto", nvml=nvml)] == [(0, 1)]


def test_indices_become_lanes_in_the_order_given():
    lanes = discover("3, 1", nvml=FakeNvml(*(FakeCard(uuid=f"GPU-{i}") for i in range(4))))
    assert [(g.lane, g.index, g.uuid) for g in lanes] == [(0, 3, "GPU-3"), (1, 1, "GPU-1")]


def test_an_unknown_index_is_a_user_error():
    with pytest.raises(GpuSpecError, match=r"there is no GPU 5 \(NVML sees GPUs 0-1\)"):
        discover("0,5", nvml=FakeNvml(FakeCard(), FakeCard()))


def test_a_duplicate_index_is_a_user_error():
    with pytest.raises(GpuSpecError, match="GPU 1 is listed twice"):
        discover("1,0,1", nvml=FakeNvml(FakeCard(), FakeCard()))


def test_each_card_knows_its_device_node_for_the_sandbox_unless_nvml_will_not_say():
    # Minor numbers need not follow NVML's (PCI) order; a card that cannot say gets None,
    # and the sandbox then binds every card's node rather than guess.
    lanes = discover("auto", nvml=FakeNvml(FakeCard(minor=3), FakeCard(uuid="GPU-1", minor=0),
                                           FakeCard(uuid="GPU-2", unsupported={"minor"})))
    assert [g.minor for g in lanes] == [3, 0, None]
    assert [g.index for g in lanes] == [0, 1, 2]


def test_a_gpu_lane_shows_only_its_card_and_is_compared_by_model():
    card = Gpu(lane=0, index=2, uuid="GPU-x", name="NVIDIA H200")
    assert card.visible_devices == "2"
    assert card.model == "NVIDIA H200"


def test_a_cpu_lane_hides_every_gpu():
    lane = discover("cpu:1")[0]
    assert lane.visible_devices == ""
    assert lane.model == "cpu"


# ---------------------------------------------------------------------------- clock events

@pytest.mark.parametrize("mask,text", [
    (0, None), (None, None), (0x1, None),
    (0x4 | 0x8, "sw_power_cap,hw_slowdown"),
    (0x1 | 0x40, "hw_thermal"),
    (0x20 | 0x10000, "sw_thermal,0x10000"),
])
def test_clock_event_bits_read_as_short_names(mask, text):
    assert clock_event_names(mask) == text


# ------------------------------------------------------------------------------- telemetry

def test_a_sample_reports_what_the_card_supports_and_none_for_the_rest():
    nvml = FakeNvml(FakeCard(unsupported={"power", "temp", "reasons"}))
    recorder = Recorder()
    sampler = sampler_for(nvml, [gpu(0)], recorder)
    sampler.start()
    wait_for(lambda: recorder.samples)
    sampler.stop()
    sample = recorder.samples[0]
    assert (sample.gpu_index, sample.gpu_uuid) == (0, "GPU-0000")
    assert (sample.util_pct, sample.mem_used_mb, sample.mem_total_mb) == (97, 40_000, 81_559)
    assert sample.sm_clock_mhz == 1980
    assert (sample.power_w, sample.temp_c, sample.throttle_reasons) == (None, None, None)
    assert sample.t.tzinfo is None
    assert sampler.message is None


def test_a_supported_sample_has_every_field():
    recorder = Recorder()
    sampler = sampler_for(FakeNvml(FakeCard()), [gpu(0)], recorder)
    sampler.start()
    wait_for(lambda: recorder.samples)
    sampler.stop()
    sample = recorder.samples[0]
    assert sample.power_w == pytest.approx(512.345)
    assert sample.temp_c == 61
    assert sample.throttle_reasons == "sw_power_cap,hw_slowdown"


def test_an_unsupported_field_is_not_asked_for_again():
    card = FakeCard(unsupported={"power"})
    recorder = Recorder()
    sampler = sampler_for(FakeNvml(card), [gpu(0)], recorder)
    sampler.start()
    wait_for(lambda: len(recorder.samples) >= 3)
    sampler.stop()
    assert card.calls["power"] == 1


def test_older_bindings_fall_back_to_the_throttle_reasons_call():
    class OldNvml(FakeNvml):
        nvmlDeviceGetCurrentClocksEventReasons = None

        def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
            return 0x20

    recorder = Recorder()
    sampler = sampler_for(OldNvml(FakeCard()), [gpu(0)], recorder)
    sampler.start()
    wait_for(lambda: recorder.samples)
    sampler.stop()
    assert recorder.samples[0].throttle_reasons == "sw_thermal"


@pytest.mark.parametrize("error", [pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_ResetRequired])
def test_a_lost_gpu_is_reported_once_and_the_others_go_on(error):
    lost_card = FakeCard(lose_after=2, loss=error)
    recorder = Recorder()
    lanes = [gpu(0), gpu(1, name="NVIDIA H100 PCIe")]
    sampler = sampler_for(FakeNvml(FakeCard(), lost_card), lanes, recorder)
    sampler.start()
    wait_for(lambda: recorder.lost)
    calls_when_lost = dict(lost_card.calls)
    before = len(recorder.of(0))
    wait_for(lambda: len(recorder.of(0)) >= before + 5)
    sampler.stop()
    assert len(recorder.lost) == 1
    assert len(recorder.of(1)) == 2
    lost_gpu, reason = recorder.lost[0]
    assert lost_gpu.index == 1
    assert reason.startswith("GPU 1 (NVIDIA H100 PCIe)") and reason.endswith(".")
    assert lost_card.calls == calls_when_lost
    assert sampler.processes(1) == ()


def test_a_gpu_whose_handle_is_gone_at_start_is_lost():
    recorder = Recorder()
    sampler = sampler_for(FakeNvml(FakeCard()), [gpu(0), gpu(1, index=7)], recorder)
    sampler.start()
    wait_for(lambda: len(recorder.of(0)) >= 2)
    sampler.stop()
    assert [g.index for g, _ in recorder.lost] == [7]
    assert recorder.of(7) == []


def test_an_unexpected_error_is_logged_once_and_sampling_goes_on(caplog):
    broken = FakeCard(broken=RuntimeError("driver said something odd"))
    recorder = Recorder()
    sampler = sampler_for(FakeNvml(broken, FakeCard()), [gpu(0), gpu(1)], recorder)
    with caplog.at_level(logging.ERROR, logger="autoresearch.gpus"):
        sampler.start()
        wait_for(lambda: len(recorder.of(1)) >= 5)
        sampler.stop()
    assert broken.calls["util"] >= 5
    assert recorder.of(0) == [] and recorder.lost == []
    failures = [r for r in caplog.records if r.exc_info]
    assert len(failures) == 1 and "GPU 0" in failures[0].getMessage()


def test_a_failing_consumer_does_not_stop_the_sampler():
    calls = []

    def on_sample(sample):
        calls.append(sample)
        raise ValueError("consumer bug")

    sampler = TelemetrySampler([gpu(0)], on_sample, lambda g, r: None, interval=0.01,
                               nvml=FakeNvml(FakeCard()))
    sampler.start()
    wait_for(lambda: len(calls) >= 3)
    sampler.stop()


def test_stop_ends_the_thread_during_a_long_interval_and_releases_nvml():
    nvml = FakeNvml(FakeCard())
    recorder = Recorder()
    sampler = sampler_for(nvml, [gpu(0)], recorder, interval=3600)
    sampler.start()
    wait_for(lambda: recorder.samples)
    sampler.stop()
    assert not any(t.name == "gpu-telemetry" and t.is_alive() for t in threading.enumerate())
    assert nvml.inits == nvml.shutdowns == 1
    assert len(recorder.samples) == 1


def test_cpu_lanes_are_never_sampled():
    nvml = FakeNvml(FakeCard())
    recorder = Recorder()
    sampler = sampler_for(nvml, discover("cpu:2"), recorder)
    sampler.start()
    sampler.stop()
    assert nvml.inits == 0 and recorder.samples == []
    assert sampler.processes(0) == ()


def test_a_cpu_lane_beside_a_gpu_lane_yields_only_the_gpus_samples():
    recorder = Recorder()
    lanes = [Gpu(lane=0, index=None, uuid=None, name="cpu"), gpu(1, index=0)]
    sampler = sampler_for(FakeNvml(FakeCard()), lanes, recorder)
    sampler.start()
    wait_for(lambda: len(recorder.samples) >= 3)
    sampler.stop()
    assert {s.gpu_index for s in recorder.samples} == {0}


def test_without_nvml_telemetry_is_off_with_a_message():
    recorder = Recorder()
    nvml = FakeNvml(init_error=pynvml.NVMLError_LibraryNotFound)
    sampler = sampler_for(nvml, [gpu(0)], recorder)
    sampler.start()
    sampler.stop()
    assert sampler.message == "NVML not available: NVML Shared Library Not Found"
    assert recorder.samples == [] and recorder.lost == []


def test_the_real_nvml_without_a_driver_turns_telemetry_off():
    skip_if_a_driver_is_present()
    recorder = Recorder()
    sampler = TelemetrySampler([gpu(0)], recorder.on_sample, recorder.on_lost)
    sampler.start()
    sampler.stop()
    assert sampler.message.startswith("NVML not available: ")
    assert recorder.samples == [] and recorder.lost == []


def test_compute_processes_are_listed_per_lane():
    card = FakeCard(processes=[(4242, 2048 * MIB), (7, None)])
    recorder = Recorder()
    sampler = sampler_for(FakeNvml(card), [gpu(0)], recorder)
    sampler.start()
    wait_for(lambda: sampler.processes(0))
    sampler.stop()
    assert sampler.processes(0) == (GpuProcess(pid=4242, used_memory_mb=2048.0),
                                    GpuProcess(pid=7, used_memory_mb=None))


def test_compute_processes_are_read_less_often_than_samples():
    card = FakeCard()
    recorder = Recorder()
    sampler = sampler_for(FakeNvml(card), [gpu(0)], recorder, process_interval=3600)
    sampler.start()
    wait_for(lambda: len(recorder.samples) >= 5)
    sampler.stop()
    assert card.calls["processes"] == 1


def test_the_record_of_what_ran_names_the_driver_the_models_and_the_packages():
    """scheduler/runs/environment.py, for the runs table and the claim's bundle: the driver from NVML
    (once, initialised and shut down), the CUDA build from torch's version, no torch import."""
    from importlib import metadata

    from scheduler.runs.environment import describe

    class WithDriver(FakeNvml):
        def nvmlSystemGetDriverVersion(self):
            return b"580.65.06"

    nvml = WithDriver()
    gpus = [Gpu(0, 0, "GPU-a", "NVIDIA H100 80GB HBM3"), Gpu(1, None, None, "cpu")]
    found = describe(gpus, nvml)
    assert found["driver"] == "580.65.06" and (nvml.inits, nvml.shutdowns) == (1, 1)
    assert found["gpu_models"] == ["NVIDIA H100 80GB HBM3", "cpu"]
    assert found["packages"]["torch"] == metadata.version("torch")
    assert found["torch_cuda"] is None  # this machine's build is the CPU one (+cpu)
    assert describe([Gpu(0, None, None, "cpu")], WithDriver())["driver"] is None  # CPU lanes ask no driver
    assert describe([gpus[0]], FakeNvml(init_error=pynvml.NVMLError_LibraryNotFound))["driver"] is None
