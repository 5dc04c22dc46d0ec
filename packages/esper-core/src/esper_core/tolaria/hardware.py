"""What the machine is doing at a decision point: the ``HardwareContext`` of the state packet, and its telemetry.

A :class:`HardwareProbe` is made once per run (the trainer holds it) and read once per decision point, never per
batch. Each read gives:

- the device (type and index) and its memory in GiB: on CUDA free and total from ``torch.cuda.mem_get_info`` (the
  CUDA driver's view, which is also right inside a MIG instance, where NVML's whole-GPU figures would not be), on
  any other device the machine's MemTotal and MemAvailable from /proc/meminfo;
- on CUDA, the compute capability from torch ("9.0"), and through NVML (the ``pynvml`` module of the
  ``nvidia-ml-py`` distribution) the GPU's utilization (the share of the driver's last sample period, 1/6 s to 1 s,
  in which a kernel ran) and its core temperature in degrees Celsius;
- the machine's CPU utilization: the busy share of all CPUs over the interval since the probe's previous read, from
  /proc/stat (absent on the first read, which has no interval, and where /proc/stat cannot be read);
- the process's resident memory (/proc/self/statm), which the packet has no field for: telemetry only
  (:attr:`HardwareProbe.extras`, :func:`hardware_metrics`).

A field that was not measured stays absent (never zero-filled): the learned policy encodes each utilization field
with a presence flag, and the risk engine only judges what is present.

**NVML.** ``pynvml`` is imported, and ``nvmlInit`` called, at the first read of a CUDA device, once per process.
When that fails (the module is missing, ``pynvml.NVMLError`` such as ``NVMLError_LibraryNotFound``) one log note
says why and that GPU utilization and temperature will be absent, and NVML is never tried again in the process.
Likewise a single reading NVML refuses (``NVMLError_NotSupported`` on some boards and MIG instances) is noted once
and not asked for again. A run on the CPU (or another non-CUDA device) never touches NVML: it gets one INFO note,
``no GPU: ...``, once per process.

**Which NVML device.** ``CUDA_VISIBLE_DEVICES`` (and ``CUDA_DEVICE_ORDER``) renumber the GPUs torch sees but not
the ones NVML sees, so torch's device index is never used as an NVML index. The probe asks NVML for the device with
the UUID torch reports for the run's device (``torch.cuda.get_device_properties(i).uuid``), then, failing that, for
its PCI bus id; only where neither identifies a device and the machine has exactly one GPU is NVML's device 0
taken. Otherwise the GPU readings are absent, with one note.

**Determinism.** Utilization and temperature depend on what else the machine is doing, so a policy that reads them
(the learned policy does) can decide differently in two runs of the same configuration. With
``tolaria.hardware_utilization = false`` the CPU utilization, GPU utilization and temperature fields stay absent
(NVML is then not used at all), so that decisions do not depend on machine load; memory is still measured, and the
device-pressure rule still sees it. The cost: the risk engine's temperature and CPU rules have nothing to judge.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from esper_core.leyline import HardwareContext
from esper_core.telemetry import Metric

__all__ = ["HardwareProbe", "HostExtras", "Nvml", "base_context", "hardware_metrics"]

logger = logging.getLogger("esper.tolaria.hardware")

GIB = 2**30

#: The notes already logged in this process (each at most once).
_NOTED: set[str] = set()


def note_once(key: str, level: int, message: str) -> None:
    """Log ``message`` the first time ``key`` is noted in this process; never again."""
    if key in _NOTED:
        return
    _NOTED.add(key)
    logger.log(level, message)


@attrs.frozen
class HostExtras:
    """What a read measured that the ``HardwareContext`` has no field for (telemetry only; no controller sees it).

    ``None``: not measured.
    """

    process_resident_gb: float | None = None


def base_context(device: torch.device, proc: Path = Path("/proc")) -> HardwareContext:
    """The device with its memory (the GPU's on CUDA, the machine's otherwise): what needs no probe."""
    context = HardwareContext(device_type=device.type, device_id=str(device.index or 0))
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        context.total_memory_gb, context.available_memory_gb = total / GIB, free / GIB
    else:
        context.total_memory_gb, context.available_memory_gb = machine_memory_gb(proc)
    return context


def machine_memory_gb(proc: Path = Path("/proc")) -> tuple[float, float]:
    """Total and available memory (GiB) from /proc/meminfo (zeros where it cannot be read)."""
    try:
        lines = (proc / "meminfo").read_text(encoding="ascii").splitlines()
        fields = dict(line.split(":", 1) for line in lines)
        total = int(fields["MemTotal"].split()[0]) / 2**20
        available = int(fields["MemAvailable"].split()[0]) / 2**20
        return total, available
    except (OSError, KeyError, ValueError):
        return 0.0, 0.0


def cpu_times(proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """Busy and total time of all the machine's CPUs since boot (in clock ticks), from /proc/stat's ``cpu`` line;
    ``None`` where it cannot be read.

    Total is user + nice + system + idle + iowait + irq + softirq + steal (guest time is already inside user and
    nice); busy is total less idle and iowait.
    """
    try:
        with (proc / "stat").open(encoding="ascii") as file:
            first = file.readline().split()
        if not first or first[0] != "cpu":
            return None
        values = [int(value) for value in first[1:9]]
    except (OSError, ValueError):
        return None
    values += [0] * (8 - len(values))  # old kernels list fewer columns
    total = sum(values)
    return total - values[3] - values[4], total


def process_resident_gb(proc: Path = Path("/proc")) -> float | None:
    """The resident memory of this process in GiB (/proc/self/statm), or ``None`` where it cannot be read."""
    try:
        resident_pages = int((proc / "self" / "statm").read_text(encoding="ascii").split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / GIB
    except (OSError, ValueError, IndexError):
        return None


def cuda_identity(index: int) -> tuple[str | None, str | None]:
    """The UUID (as NVML spells it, ``GPU-...``) and PCI bus id of torch's CUDA device ``index``; ``None`` for what
    torch does not give."""
    properties = torch.cuda.get_device_properties(index)
    uuid = str(getattr(properties, "uuid", "") or "") or None
    if uuid is not None and not uuid.startswith(("GPU-", "MIG-")):
        uuid = f"GPU-{uuid}"
    bus, slot, domain = (getattr(properties, name, None) for name in ("pci_bus_id", "pci_device_id", "pci_domain_id"))
    pci = f"{domain:04x}:{bus:02x}:{slot:02x}.0" if None not in (bus, slot, domain) else None
    return uuid, pci


class Nvml:
    """The process's NVML session: started at its first use, and never tried again once that failed.

    ``identify`` (torch's device index to its UUID and PCI bus id) is :func:`cuda_identity` unless a test says
    otherwise.
    """

    def __init__(self, identify: Callable[[int], tuple[str | None, str | None]] = cuda_identity) -> None:
        self.identify = identify
        self.module: Any = None
        #: Why NVML is unavailable ("" while it is, or was never tried).
        self.unavailable = ""
        self.tried = False
        self._handles: dict[int, Any] = {}
        #: (torch index, reading) pairs NVML refused: not asked for again.
        self._refused: set[tuple[int, str]] = set()

    def start(self) -> Any:
        """The ``pynvml`` module, initialized; ``None`` when NVML is unavailable (said once, never retried)."""
        if self.tried:
            return self.module
        self.tried = True
        try:
            pynvml = importlib.import_module("pynvml")  # lazily, and untyped: it ships no stubs
        except ImportError as error:
            return self._give_up(f"the pynvml module cannot be imported ({error}; it comes with nvidia-ml-py)")
        try:
            pynvml.nvmlInit()
        except Exception as error:  # noqa: BLE001 - NVMLError above all; hardware telemetry must never stop a run
            return self._give_up(f"NVML did not start ({type(error).__name__}: {error})")
        self.module = pynvml
        return pynvml

    def _give_up(self, why: str) -> None:
        self.unavailable = why
        note_once(
            "nvml",
            logging.WARNING,
            f"no GPU readings: {why}; GPU utilization and temperature will be absent from the state packets of "
            "this process (NVML is not tried again)",
        )

    def handle(self, index: int) -> Any:
        """NVML's handle of torch's CUDA device ``index`` (see the module's notes), or ``None`` (said once)."""
        if index in self._handles:
            return self._handles[index]
        nvml = self.start()
        if nvml is None:
            return None
        try:
            uuid, pci = self.identify(index)
        except Exception:  # noqa: BLE001 - an odd torch build must not stop a run for want of telemetry
            uuid, pci = None, None
        attempts: list[tuple[str, Callable[[], Any]]] = []
        if uuid:
            attempts.append((f"UUID {uuid}", lambda: nvml.nvmlDeviceGetHandleByUUID(uuid)))
        if pci:
            attempts.append((f"PCI bus id {pci}", lambda: nvml.nvmlDeviceGetHandleByPciBusId(pci)))
        attempts.append(("the only GPU", lambda: nvml.nvmlDeviceGetHandleByIndex(0) if self._single(nvml) else None))
        handle, failures = None, []
        for what, attempt in attempts:
            try:
                handle = attempt()
            except nvml.NVMLError as error:
                failures.append(f"{what}: {type(error).__name__}")
                continue
            if handle is not None:
                break
        if handle is None:
            tried = "; ".join(failures) or "torch gave neither a UUID nor a PCI bus id, and there are several GPUs"
            note_once(
                f"nvml-device-{index}",
                logging.WARNING,
                f"no GPU readings for cuda:{index}: NVML has no device matching torch's ({tried}); its utilization "
                "and temperature will be absent",
            )
        self._handles[index] = handle
        return handle

    @staticmethod
    def _single(nvml: Any) -> bool:
        return bool(nvml.nvmlDeviceGetCount() == 1 and torch.cuda.device_count() == 1)

    def reading(self, index: int, name: str, read: Callable[[Any, Any], float]) -> float | None:
        """``read(pynvml, handle)`` for torch's CUDA device ``index``; ``None`` when NVML cannot give it (a refusal
        is said once, and that reading is not asked for again)."""
        if (index, name) in self._refused:
            return None
        handle = self.handle(index)
        if handle is None:
            return None
        nvml = self.module
        try:
            return float(read(nvml, handle))
        except nvml.NVMLError as error:
            self._refused.add((index, name))
            note_once(
                f"nvml-{name}-{index}",
                logging.WARNING,
                f"no GPU {name} for cuda:{index}: NVML refused it ({type(error).__name__}: {error}); it will be absent",
            )
            return None


#: The process's NVML session, shared by every probe.
NVML = Nvml()


def _gpu_utilization(nvml: Any, handle: Any) -> float:
    return float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)


def _gpu_temperature(nvml: Any, handle: Any) -> float:
    return float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))


class HardwareProbe:
    """Reads the run's hardware at decision points (see the module's notes).

    :param utilization: measure CPU and GPU utilization and GPU temperature (``tolaria.hardware_utilization``);
        off, those fields stay absent and NVML is never used.
    :param nvml: the NVML session (the process's by default).
    :param proc: where /proc is (tests point it elsewhere).
    """

    def __init__(self, utilization: bool = True, *, nvml: Nvml | None = None, proc: Path = Path("/proc")) -> None:
        self.utilization = utilization
        self.nvml = NVML if nvml is None else nvml
        self.proc = proc
        #: What the latest read measured beyond the context (telemetry only).
        self.extras = HostExtras()
        self._cpu: tuple[int, int] | None = None
        self._capability: dict[int, str] = {}

    def read(self, device: torch.device) -> HardwareContext:
        """The ``HardwareContext`` of ``device`` now (and :attr:`extras`)."""
        context = base_context(device, self.proc)
        self.extras = HostExtras(process_resident_gb=process_resident_gb(self.proc))
        if not self.utilization:
            note_once(
                "utilization-off",
                logging.INFO,
                "tolaria.hardware_utilization = false: CPU and GPU utilization and GPU temperature are not measured, "
                "so decisions do not depend on machine load",
            )
            return context
        cpu = self._cpu_percent()
        if cpu is not None:
            context.cpu_utilization_percent = cpu
        if device.type == "cuda":
            self._gpu(device, context)
        else:
            note_once(
                "no-gpu",
                logging.INFO,
                f"no GPU: the run trains on {device.type}, so its state packets carry no GPU utilization or "
                "temperature (CPU utilization and memory are measured)",
            )
        return context

    def _cpu_percent(self) -> float | None:
        now = cpu_times(self.proc)
        previous, self._cpu = self._cpu, now
        if now is None or previous is None:
            return None
        total = now[1] - previous[1]
        if total <= 0:
            return None  # no tick between the two reads: no interval to judge
        return min(100.0, max(0.0, 100.0 * (now[0] - previous[0]) / total))

    def _gpu(self, device: torch.device, context: HardwareContext) -> None:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index not in self._capability:
            major, minor = torch.cuda.get_device_capability(index)
            self._capability[index] = f"{major}.{minor}"
        context.compute_capability = self._capability[index]
        utilization = self.nvml.reading(index, "utilization", _gpu_utilization)
        if utilization is not None:
            context.utilization_percent = utilization
        temperature = self.nvml.reading(index, "temperature", _gpu_temperature)
        if temperature is not None:
            context.temperature_celsius = temperature


def hardware_metrics(context: HardwareContext, extras: HostExtras | None = None) -> list[Metric]:
    """The telemetry of a decision point's hardware: one metric per measured field, attribute ``device``
    (``"cuda:0"``, ``"cpu:0"``).

    Names: ``tolaria.hardware.gpu_present`` (1 when the run trains on a CUDA GPU, else 0; always),
    ``tolaria.hardware.memory_total_gb`` and ``memory_available_gb`` (GiB, when the memory is known),
    ``tolaria.hardware.cpu_utilization_percent``, ``gpu_utilization_percent``, ``gpu_temperature_celsius`` and
    ``process_resident_gb`` (``extras``), each when measured.
    """
    labels = {"device": f"{context.device_type or 'cpu'}:{context.device_id or '0'}"}
    metrics = [Metric("tolaria.hardware.gpu_present", float(context.device_type == "cuda"), attributes=labels)]
    if context.total_memory_gb > 0:
        metrics.append(Metric("tolaria.hardware.memory_total_gb", context.total_memory_gb, "GiB", labels))
        metrics.append(Metric("tolaria.hardware.memory_available_gb", context.available_memory_gb, "GiB", labels))
    if context.HasField("cpu_utilization_percent"):
        metrics.append(Metric("tolaria.hardware.cpu_utilization_percent", context.cpu_utilization_percent, "%", labels))
    if context.HasField("utilization_percent"):
        metrics.append(Metric("tolaria.hardware.gpu_utilization_percent", context.utilization_percent, "%", labels))
    if context.HasField("temperature_celsius"):
        metrics.append(Metric("tolaria.hardware.gpu_temperature_celsius", context.temperature_celsius, "Cel", labels))
    if extras is not None and extras.process_resident_gb is not None:
        metrics.append(Metric("tolaria.hardware.process_resident_gb", extras.process_resident_gb, "GiB", labels))
    return metrics
