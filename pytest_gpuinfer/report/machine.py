"""The machine and target sections of a report: GPUs by UUID, driver, CUDA, CPU, engine."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import sys
from collections.abc import Sequence
from typing import Any

import psutil

from pytest_gpuinfer.hardware.gpu import GPUInfo, GPUInventory
from pytest_gpuinfer.targets import InferenceServer


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_entry(info: GPUInfo, selected: bool) -> dict[str, Any]:
    """One GPU: UUID, name, memory, compute capability, MIG, and whether this run uses it."""
    return {
        "index": info.index,
        "uuid": info.uuid,
        "name": info.name,
        "memory_total_bytes": info.memory_total_bytes,
        "memory_used_bytes": info.memory_used_bytes,
        "compute_capability": (
            None if info.compute_capability is None else ".".join(map(str, info.compute_capability))
        ),
        "mig_enabled": info.mig_enabled,
        "selected": selected,
    }


def machine_section(inventory: GPUInventory, selected: Sequence[GPUInfo]) -> dict[str, Any]:
    """What the run ran on: host, OS, Python, CPU and memory, GPUs (by UUID), driver, CUDA."""
    chosen = {g.uuid for g in selected} or {g.uuid for g in inventory.gpus}
    memory = psutil.virtual_memory()
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": {
            "model": _cpu_model(),
            "architecture": platform.machine(),
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
            "usable_cores": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
        },
        "memory_total_bytes": memory.total,
        "gpus": [gpu_entry(g, g.uuid in chosen) for g in inventory.gpus],
        "driver_version": inventory.driver_version,
        "cuda_version": inventory.cuda_version,
        "gpu_unavailable_reason": inventory.unavailable_reason if not inventory.gpus else None,
        "extra": {},
    }


def target_section(server: InferenceServer, engine_args: Sequence[str] = ()) -> dict[str, Any]:
    """The target a test ran against: engine, version, model, arguments, URL, GPUs."""
    return {
        "engine": server.engine,
        "version": server.engine_version,
        "model": server.model,
        "model_path": server.model_path,
        "args": list(engine_args),
        "args_text": shlex.join(engine_args),
        "base_url": server.base_url,
        "max_model_len": server.max_model_len,
        "launched": server.launched,
        "cold_start_s": server.cold_start_s,
        "gpu_uuids": list(server.gpu_uuids),
        "simulator": server.is_simulator,
        "description": server.describe(),
    }
