"""A fake NVML module for the plugin's tests: answers the calls gpu.py makes, from GPU dicts."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


def make_fake_nvml(
    gpus: list[dict[str, Any]] | None = None,
    *,
    init_error: str | None = None,
    driver: Any = "580.65.06",
    cuda: int = 13000,
) -> SimpleNamespace:
    """A module-like object answering the NVML calls gpu.py makes, from a list of GPU dicts."""
    gpus = gpus if gpus is not None else []
    calls: list[str] = []

    def init() -> None:
        calls.append("init")
        if init_error:
            raise FakeNVMLError(init_error)

    def handle_by_uuid(uuid: Any) -> dict[str, Any]:
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in gpus:
            if gpu["uuid"] == text:
                return gpu
        raise FakeNVMLError(f"no GPU {text}")

    def mig_mode(handle: dict[str, Any]) -> tuple[int, int]:
        if handle.get("mig") is None:
            raise FakeNVMLError("Not Supported")
        return (int(handle["mig"]), 0)

    return SimpleNamespace(
        calls=calls,
        nvmlInit=init,
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: driver,
        nvmlSystemGetCudaDriverVersion=lambda: cuda,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda index: gpus[index],
        nvmlDeviceGetHandleByUUID=handle_by_uuid,
        nvmlDeviceGetUUID=lambda h: h["uuid"],
        nvmlDeviceGetName=lambda h: h["name"],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
            total=h["total"], used=h["used"], free=h["total"] - h["used"]
        ),
        nvmlDeviceGetCudaComputeCapability=lambda h: h.get("cc", (9, 0)),
        nvmlDeviceGetMigMode=mig_mode,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in h.get("procs", {}).items()
        ],
    )


H100 = {
    "uuid": "GPU-11111111-2222-3333-4444-555555555555",
    "name": "NVIDIA H100 80GB HBM3",
    "total": 80 * 2**30,
    "used": 1 * 2**30,
    "cc": (9, 0),
    "mig": 0,
}
L4 = {
    "uuid": "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    "name": b"NVIDIA L4",
    "total": 24 * 2**30,
    "used": 0,
    "cc": (8, 9),
    "mig": None,
}
