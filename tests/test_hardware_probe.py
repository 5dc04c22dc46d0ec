"""Tolaria's hardware probe: the machine's CPU and memory for real, the GPU through a stand-in ``pynvml`` module
(this machine has no GPU), the notes it logs once, the determinism switch, the telemetry it becomes, and the probe
wired into a run's state packets."""

from __future__ import annotations

import logging
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from esper_core.leyline import HardwareContext, SystemStatePacket
from esper_core.plugins import Registry
from esper_core.tolaria import hardware
from esper_core.tolaria.assembly import start_run
from esper_core.tolaria.hardware import HardwareProbe, HostExtras, Nvml, hardware_metrics
from esper_core.tolaria.record import decode_message, read_record
from esper_core.tolaria.trainer import Trainer

CPU = torch.device("cpu")
LOGGER = "esper.tolaria.hardware"
GPU_FIELDS = ("utilization_percent", "temperature_celsius")


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts as a new process would: nothing noted yet, NVML never tried."""
    monkeypatch.setattr(hardware, "_NOTED", set())
    monkeypatch.setattr(hardware, "NVML", Nvml())


def notes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def burn_cpu(seconds: float = 0.15) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# -- the CPU, for real ------------------------------------------------------------------------------------------------
def test_two_reads_give_the_cpu_utilization_over_the_interval_and_the_first_has_none() -> None:
    probe = HardwareProbe()
    first = probe.read(CPU)
    assert not first.HasField("cpu_utilization_percent")  # no interval yet
    burn_cpu()
    second = probe.read(CPU)
    assert second.HasField("cpu_utilization_percent")
    assert 0.0 < second.cpu_utilization_percent <= 100.0  # this process was busy for the whole interval
    assert second.device_type == "cpu" and second.device_id == "0"
    assert second.total_memory_gb >= second.available_memory_gb > 0
    assert probe.extras.process_resident_gb is not None and 0 < probe.extras.process_resident_gb < 1024
    for field in GPU_FIELDS:
        assert not second.HasField(field)
    assert second.compute_capability == ""


def write_stat(proc: Path, user: int, idle: int, iowait: int = 0) -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    (proc / "stat").write_text(f"cpu  {user} 0 0 {idle} {iowait} 0 0 0 50 0\ncpu0 1 2 3 4\n", encoding="ascii")


def test_the_cpu_share_is_busy_time_over_all_time_between_two_reads(tmp_path: Path) -> None:
    probe = HardwareProbe(proc=tmp_path)
    write_stat(tmp_path, user=1000, idle=1000, iowait=100)
    assert not probe.read(CPU).HasField("cpu_utilization_percent")
    write_stat(tmp_path, user=1300, idle=1600, iowait=200)  # 300 busy of 1000 (idle and iowait are not busy)
    assert probe.read(CPU).cpu_utilization_percent == pytest.approx(30.0)
    write_stat(tmp_path, user=1300, idle=1600, iowait=200)  # no tick in between: no interval to judge
    assert not probe.read(CPU).HasField("cpu_utilization_percent")


def test_an_unreadable_proc_leaves_the_cpu_fields_absent_and_raises_nothing(tmp_path: Path) -> None:
    probe = HardwareProbe(proc=tmp_path / "missing")
    for _ in range(3):
        context = probe.read(CPU)
        assert not context.HasField("cpu_utilization_percent")
        assert context.total_memory_gb == 0.0 and context.available_memory_gb == 0.0  # unknown, as the contract says
    assert probe.extras == HostExtras()


def test_a_cpu_run_notes_no_gpu_once_per_process_and_never_touches_nvml(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    caplog.set_level(logging.INFO, logger=LOGGER)
    for probe in (HardwareProbe(), HardwareProbe()):  # two runs in one process
        for _ in range(3):
            probe.read(CPU)
    said = notes(caplog)
    assert len(said) == 1 and said[0].startswith("no GPU: ")
    assert caplog.records[0].levelno == logging.INFO
    assert fake.calls == {}
    assert not hardware.NVML.tried


# -- the GPU, through a stand-in pynvml -----------------------------------------------------------------------------
class FakeNvml:
    """A ``pynvml`` stand-in with one GPU, UUID ``GPU-b``, counting the calls made to it."""

    def __init__(self, *, init_error: str = "", refuse: str = "") -> None:
        self.calls: dict[str, int] = {}
        self.asked_uuids: list[str] = []
        module: Any = types.ModuleType("pynvml")

        class NVMLError(Exception):  # pynvml's names
            pass

        class NVMLError_LibraryNotFound(NVMLError):
            pass

        class NVMLError_NotSupported(NVMLError):
            pass

        errors = {"library": NVMLError_LibraryNotFound, "unsupported": NVMLError_NotSupported}
        module.NVMLError = NVMLError
        module.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
        module.NVML_TEMPERATURE_GPU = 0

        def counted(name: str, result: Any) -> Any:
            def call(*args: Any) -> Any:
                self.calls[name] = self.calls.get(name, 0) + 1
                return result(*args)

            return call

        def init() -> None:
            if init_error:
                raise errors[init_error]("NVML Shared Library Not Found")

        def by_uuid(uuid: str) -> str:
            self.asked_uuids.append(uuid)
            if uuid != "GPU-b":
                raise NVMLError("Not Found")
            return "handle-b"

        def utilization(handle: str) -> Any:
            if refuse == "utilization":
                raise NVMLError_NotSupported("Not Supported")
            return types.SimpleNamespace(gpu=87, memory=40)

        def temperature(handle: str, sensor: int) -> int:
            assert handle == "handle-b" and sensor == 0
            return 71

        module.nvmlInit = counted("nvmlInit", init)
        module.nvmlDeviceGetHandleByUUID = counted("nvmlDeviceGetHandleByUUID", by_uuid)
        module.nvmlDeviceGetHandleByPciBusId = counted("nvmlDeviceGetHandleByPciBusId", lambda pci: "handle-pci")
        module.nvmlDeviceGetHandleByIndex = counted("nvmlDeviceGetHandleByIndex", lambda index: f"handle-{index}")
        module.nvmlDeviceGetCount = counted("nvmlDeviceGetCount", lambda: 2)
        module.nvmlDeviceGetUtilizationRates = counted("nvmlDeviceGetUtilizationRates", utilization)
        module.nvmlDeviceGetTemperature = counted("nvmlDeviceGetTemperature", temperature)
        self.module = module


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[torch.device]:
    """torch's ``cuda:1`` as a machine with CUDA_VISIBLE_DEVICES=3,5 would show it: NVML knows it as its device 5,
    UUID ``GPU-b``; torch's index 1 must never be used as NVML's."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (6 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    yield torch.device("cuda", 1)


def identify(index: int) -> tuple[str | None, str | None]:
    return {0: ("GPU-a", None), 1: ("GPU-b", None)}[index]


def test_nvml_readings_fill_the_gpu_fields_of_the_device_torch_trains_on(
    monkeypatch: pytest.MonkeyPatch, cuda: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    caplog.set_level(logging.INFO, logger=LOGGER)
    probe = HardwareProbe(nvml=Nvml(identify=identify))
    first = probe.read(cuda)
    context = probe.read(cuda)
    assert (context.device_type, context.device_id) == ("cuda", "1")
    assert context.utilization_percent == 87.0
    assert context.temperature_celsius == 71.0
    assert context.total_memory_gb == 80.0 and context.available_memory_gb == 6.0
    assert context.compute_capability == "9.0"
    assert first.utilization_percent == 87.0  # the GPU needs no interval
    assert fake.asked_uuids == ["GPU-b"]  # matched by UUID, once, whatever CUDA_VISIBLE_DEVICES says
    assert "nvmlDeviceGetHandleByIndex" not in fake.calls
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 2  # one reading per read, no more
    assert notes(caplog) == []


def test_nvml_that_cannot_start_is_noted_once_and_never_retried(
    monkeypatch: pytest.MonkeyPatch, cuda: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNvml(init_error="library")
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    caplog.set_level(logging.INFO, logger=LOGGER)
    nvml = Nvml(identify=identify)
    for probe in (HardwareProbe(nvml=nvml), HardwareProbe(nvml=nvml)):
        for _ in range(3):
            context = probe.read(cuda)
            for field in GPU_FIELDS:
                assert not context.HasField(field)  # absent, never 0
            assert context.total_memory_gb == 80.0 and context.compute_capability == "9.0"
    assert fake.calls == {"nvmlInit": 1}
    said = notes(caplog)
    assert len(said) == 1
    assert "NVMLError_LibraryNotFound" in said[0] and "absent" in said[0]
    assert "NVMLError_LibraryNotFound" in nvml.unavailable


def test_a_missing_pynvml_module_is_noted_once(
    monkeypatch: pytest.MonkeyPatch, cuda: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    caplog.set_level(logging.INFO, logger=LOGGER)
    probe = HardwareProbe(nvml=Nvml(identify=identify))
    for _ in range(2):
        assert not probe.read(cuda).HasField("utilization_percent")
    said = notes(caplog)
    assert len(said) == 1 and "pynvml" in said[0] and "nvidia-ml-py" in said[0]


def test_a_reading_nvml_refuses_is_noted_once_and_not_asked_again(
    monkeypatch: pytest.MonkeyPatch, cuda: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNvml(refuse="utilization")
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    caplog.set_level(logging.INFO, logger=LOGGER)
    probe = HardwareProbe(nvml=Nvml(identify=identify))
    for _ in range(3):
        context = probe.read(cuda)
        assert not context.HasField("utilization_percent")
        assert context.temperature_celsius == 71.0
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 1
    said = notes(caplog)
    assert len(said) == 1 and "NVMLError_NotSupported" in said[0]


def test_a_device_nvml_cannot_match_is_noted_and_index_is_not_guessed_among_several_gpus(
    monkeypatch: pytest.MonkeyPatch, cuda: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    caplog.set_level(logging.INFO, logger=LOGGER)
    probe = HardwareProbe(nvml=Nvml(identify=lambda index: ("GPU-unknown", None)))
    for _ in range(2):
        assert not probe.read(cuda).HasField("temperature_celsius")
    assert "nvmlDeviceGetHandleByIndex" not in fake.calls  # two GPUs: NVML's device 0 is not taken
    assert fake.calls["nvmlDeviceGetHandleByUUID"] == 1  # looked up once, not at every read
    said = notes(caplog)
    assert len(said) == 1 and "cuda:1" in said[0]


def test_utilization_off_leaves_the_load_fields_absent_and_nvml_unused(
    monkeypatch: pytest.MonkeyPatch, cuda: torch.device, tmp_path: Path
) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake.module)
    nvml = Nvml(identify=identify)
    write_stat(tmp_path, user=10, idle=10)
    probe = HardwareProbe(utilization=False, nvml=nvml, proc=tmp_path)
    for device in (CPU, cuda, CPU):
        write_stat(tmp_path, user=500, idle=100)
        context = probe.read(device)
        for field in (*GPU_FIELDS, "cpu_utilization_percent"):
            assert not context.HasField(field)
    assert context.total_memory_gb == 0.0  # tmp_path has no meminfo: unknown
    assert fake.calls == {} and not nvml.tried


# -- telemetry --------------------------------------------------------------------------------------------------------
def metric_map(context: HardwareContext, extras: HostExtras | None = None) -> dict[str, tuple[float, str]]:
    metrics = hardware_metrics(context, extras)
    assert all(dict(m.attributes) == {"device": f"{context.device_type}:{context.device_id}"} for m in metrics)
    return {m.name: (m.value, m.unit) for m in metrics}


def test_hardware_metrics_name_every_measured_field_and_only_those() -> None:
    gpu = HardwareContext(
        device_type="cuda",
        device_id="1",
        total_memory_gb=80.0,
        available_memory_gb=6.0,
        utilization_percent=87.0,
        temperature_celsius=71.0,
        cpu_utilization_percent=55.0,
    )
    assert metric_map(gpu, HostExtras(process_resident_gb=1.5)) == {
        "tolaria.hardware.gpu_present": (1.0, ""),
        "tolaria.hardware.memory_total_gb": (80.0, "GiB"),
        "tolaria.hardware.memory_available_gb": (6.0, "GiB"),
        "tolaria.hardware.cpu_utilization_percent": (55.0, "%"),
        "tolaria.hardware.gpu_utilization_percent": (87.0, "%"),
        "tolaria.hardware.gpu_temperature_celsius": (71.0, "Cel"),
        "tolaria.hardware.process_resident_gb": (1.5, "GiB"),
    }
    cpu = HardwareContext(device_type="cpu", device_id="0", total_memory_gb=16.0, available_memory_gb=8.0)
    assert metric_map(cpu) == {
        "tolaria.hardware.gpu_present": (0.0, ""),
        "tolaria.hardware.memory_total_gb": (16.0, "GiB"),
        "tolaria.hardware.memory_available_gb": (8.0, "GiB"),
    }
    unknown = HardwareContext(device_type="cpu", device_id="0")  # memory unreadable: no memory metrics
    assert metric_map(unknown, HostExtras()) == {"tolaria.hardware.gpu_present": (0.0, "")}


# -- in a run ---------------------------------------------------------------------------------------------------------
TINY = [
    "run.task=synthetic",
    "run.threads=1",
    "run.synthetic.samples=512",
    "run.synthetic.widths=[8]",
    "run.batch_size=64",
    "run.epochs=2",
    "nissa.sinks=[]",
]


@pytest.mark.parametrize("utilization", [True, False])
def test_a_runs_state_packets_carry_what_its_probe_measured(tmp_path: Path, utilization: bool) -> None:
    registry = Registry.create()
    overrides = [*TINY, f"run.runs_dir={tmp_path}", f"tolaria.hardware_utilization={str(utilization).lower()}"]
    trainer = Trainer(start_run(registry, registry.load_config(env={}, overrides=overrides)))
    try:
        trainer.fit()
    finally:
        trainer.close()
    packets = [
        decode_message(entry["packet"], SystemStatePacket).hardware
        for entry in read_record(tmp_path / trainer.run.run_id)
        if entry["kind"] == "decision"
    ]
    assert len(packets) == 2
    assert all(p.device_type == "cpu" and p.total_memory_gb > 0 for p in packets)
    assert not packets[0].HasField("cpu_utilization_percent")
    assert packets[1].HasField("cpu_utilization_percent") is utilization
    assert trainer.hardware.utilization is utilization
