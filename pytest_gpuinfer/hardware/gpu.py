"""GPU inventory and memory through NVML (nvidia-ml-py), keyed by UUID; CPU mode when absent."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


class GPUSelectionError(ValueError):
    """A ``--gpu`` value names no GPU on this machine."""


@dataclass(frozen=True)
class GPUInfo:
    """One physical GPU as NVML reports it."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    compute_capability: tuple[int, int] | None
    mig_enabled: bool | None
    """True/False when the GPU supports MIG, None when it does not."""

    @property
    def memory_total_gb(self) -> float:
        """Total memory in GiB."""
        return self.memory_total_bytes / 2**30

    def describe(self) -> str:
        """Short one-line description for headers and reports."""
        cc = (
            f", sm_{self.compute_capability[0]}{self.compute_capability[1]}"
            if self.compute_capability
            else ""
        )
        mig = ", MIG on" if self.mig_enabled else ""
        return f"{self.index}: {self.name} {self.memory_total_gb:.0f} GiB{cc}{mig} ({self.uuid})"


@dataclass(frozen=True)
class GPUInventory:
    """Every GPU NVML sees, with driver and CUDA versions; empty with a reason in CPU mode."""

    gpus: tuple[GPUInfo, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    unavailable_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def has_gpu(self) -> bool:
        """True when at least one GPU was found."""
        return bool(self.gpus)

    def header_line(self) -> str:
        """One line for the pytest report header."""
        if not self.gpus:
            return f"GPUs: none, CPU mode ({self.unavailable_reason or 'no GPU found'})"
        names = "; ".join(gpu.describe() for gpu in self.gpus)
        versions = f"driver {self.driver_version}, CUDA {self.cuda_version}"
        return f"GPUs: {len(self.gpus)} ({versions}): {names}"

    def for_worker(self, spec: str | None, worker: int) -> tuple[GPUInfo, ...]:
        """The one GPU a parallel worker pins: the ``worker``-th of the selection (or of all)."""
        candidates = self.select(spec) or self.gpus
        if not candidates:
            return ()
        return (candidates[worker % len(candidates)],)

    def select(self, spec: str | None) -> tuple[GPUInfo, ...]:
        """Resolve a ``--gpu`` value (indexes and/or UUIDs, comma-separated) to GPUs."""
        if spec is None or not spec.strip():
            return ()
        chosen: list[GPUInfo] = []
        for raw in spec.split(","):
            token = raw.strip()
            if not token:
                raise GPUSelectionError(f"--gpu {spec!r} has an empty item")
            match = self._find(token)
            if match is None:
                available = ", ".join(f"{g.index} ({g.uuid})" for g in self.gpus) or (
                    f"none: {self.unavailable_reason or 'no GPU found'}"
                )
                raise GPUSelectionError(
                    f"--gpu {token!r} names no GPU here; available: {available}"
                )
            if match not in chosen:
                chosen.append(match)
        return tuple(chosen)

    def _find(self, token: str) -> GPUInfo | None:
        """The GPU a single index or UUID (or unique UUID prefix) names."""
        if token.isdigit():
            return next((g for g in self.gpus if g.index == int(token)), None)
        matches = [g for g in self.gpus if g.uuid == token or g.uuid.startswith(token)]
        return matches[0] if len(matches) == 1 else None


def load_nvml() -> ModuleType | None:
    """Import nvidia-ml-py's ``pynvml`` module, or None when it is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def _text(value: Any) -> str:
    """NVML returns bytes on older bindings and str on newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(nvml: ModuleType) -> str | None:
    """The CUDA version the driver supports, e.g. 13000 -> '13.0'."""
    try:
        raw = int(nvml.nvmlSystemGetCudaDriverVersion())
    except Exception:
        return None
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _mig_enabled(nvml: ModuleType, handle: Any) -> bool | None:
    """Current MIG mode, or None for GPUs without MIG support."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception:
        return None
    return bool(current)


def discover(nvml: ModuleType | None = None) -> GPUInventory:
    """Take the GPU inventory; never raises: problems become ``unavailable_reason``."""
    module = nvml if nvml is not None else load_nvml()
    if module is None:
        return GPUInventory(unavailable_reason="nvidia-ml-py (pynvml) is not installed")
    try:
        module.nvmlInit()
    except Exception as exc:
        return GPUInventory(unavailable_reason=f"NVML did not initialise: {exc}")
    try:
        driver = _text(module.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(int(module.nvmlDeviceGetCount())):
            handle = module.nvmlDeviceGetHandleByIndex(index)
            memory = module.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = module.nvmlDeviceGetCudaComputeCapability(handle)
                capability: tuple[int, int] | None = (int(major), int(minor))
            except Exception:
                capability = None
            gpus.append(
                GPUInfo(
                    index=index,
                    uuid=_text(module.nvmlDeviceGetUUID(handle)),
                    name=_text(module.nvmlDeviceGetName(handle)),
                    memory_total_bytes=int(memory.total),
                    memory_used_bytes=int(memory.used),
                    compute_capability=capability,
                    mig_enabled=_mig_enabled(module, handle),
                )
            )
        reason = None if gpus else "NVML found no GPU"
        return GPUInventory(
            gpus=tuple(gpus),
            driver_version=driver,
            cuda_version=_cuda_version(module),
            unavailable_reason=reason,
        )
    except Exception as exc:
        return GPUInventory(unavailable_reason=f"NVML query failed: {exc}")
    finally:
        with contextlib.suppress(Exception):
            module.nvmlShutdown()


def visible_devices(selected: tuple[GPUInfo, ...]) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value that pins a launched server to ``selected`` by UUID."""
    return ",".join(gpu.uuid for gpu in selected)


@contextlib.contextmanager
def _nvml_session(nvml: ModuleType | None) -> Iterator[ModuleType]:
    """Initialise NVML for one query and shut it down after."""
    module = nvml if nvml is not None else load_nvml()
    if module is None:
        raise RuntimeError("nvidia-ml-py (pynvml) is not installed")
    module.nvmlInit()
    try:
        yield module
    finally:
        module.nvmlShutdown()


def memory_used_bytes(uuid: str, nvml: ModuleType | None = None) -> int:
    """Device memory in use on one GPU right now, in bytes."""
    with _nvml_session(nvml) as module:
        handle = module.nvmlDeviceGetHandleByUUID(uuid)
        return int(module.nvmlDeviceGetMemoryInfo(handle).used)


def process_memory_bytes(uuid: str, nvml: ModuleType | None = None) -> dict[int, int]:
    """Device memory per process id on one GPU (compute processes), in bytes."""
    with _nvml_session(nvml) as module:
        handle = module.nvmlDeviceGetHandleByUUID(uuid)
        result: dict[int, int] = {}
        for proc in module.nvmlDeviceGetComputeRunningProcesses(handle):
            used = getattr(proc, "usedGpuMemory", None)
            result[int(proc.pid)] = int(used) if used is not None else 0
        return result
