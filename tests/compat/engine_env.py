"""What an offline vLLM run in a subprocess needs to repeat the launched server's setup."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuinfer.compat.offline import model_flags
from pytest_gpuinfer.hardware import gpu as gpu_module
from pytest_gpuinfer.models import builtin
from pytest_gpuinfer.plugin.fixtures import gpuinfer_inventory_of, gpuinfer_settings_of
from pytest_gpuinfer.targets import InferenceServer

DTYPE_IN_LOG = re.compile(r"dtype=torch\.(\w+)")
OFFLINE_TIMEOUT_S = 420.0
"""An offline engine start here takes 50 to 80 s; a GPU box with a big model takes longer."""


@dataclass
class OfflineSetup:
    """Environment, flags and memory share for an offline engine next to the running server."""

    env: dict[str, str]
    cli_flags: list[str]
    llm_kwargs: dict[str, Any]
    server_dtype: str | None


def require_launched_vllm(server: InferenceServer) -> None:
    """Skip, naming the engine, unless the target is vLLM launched here and vLLM imports here."""
    if server.engine != "vllm" or not server.launched:
        pytest.skip(
            f"offline vLLM runs need a vLLM server launched by this run; the target is "
            f"{server.engine!r}{'' if server.launched else ' (not launched here)'}"
        )
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not importable in this Python")


def offline_setup(server: InferenceServer, model_dir: Path, config: pytest.Config) -> OfflineSetup:
    """Skip unless the target is launched vLLM with a local model and vLLM is importable here."""
    require_launched_vllm(server)
    inventory = gpuinfer_inventory_of(config)
    has_gpu = inventory.has_gpu
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if server.gpu_uuids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(server.gpu_uuids)
    if not has_gpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    settings = gpuinfer_settings_of(config)
    known = builtin.resolve(settings.model)
    # A built-in model is launched with its own flags first (its dtype among them).
    defaults = known.vllm_args() if known else []
    cli_flags, llm_kwargs = model_flags([*defaults, *settings.engine_args])
    if has_gpu:
        share = _free_share(server.gpu_uuids or tuple(g.uuid for g in inventory.gpus[:1]))
        llm_kwargs["gpu_memory_utilization"] = share
        cli_flags += ["--gpu-memory-utilization", str(share)]
    dtype = None
    if server.process is not None:
        match = DTYPE_IN_LOG.search(_read(server.process.log_path))
        dtype = match.group(1) if match else None
    return OfflineSetup(env, cli_flags, llm_kwargs, dtype)


def sibling_memory_flags(server: InferenceServer, config: pytest.Config) -> list[str]:
    """vLLM flags that fit a second engine beside ``server`` on its GPU (none without a GPU);
    skips when the server leaves too little GPU memory."""
    inventory = gpuinfer_inventory_of(config)
    if not inventory.has_gpu:
        return []
    share = _free_share(server.gpu_uuids or tuple(g.uuid for g in inventory.gpus[:1]))
    return ["--gpu-memory-utilization", str(share)]


def _read(path: Path) -> str:
    """A log file's text (empty when unreadable)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _free_share(uuids: tuple[str, ...]) -> float:
    """The fraction of the GPU still free next to the server, less a margin; skips when small."""
    if not uuids:
        pytest.skip("no GPU UUID to place the offline engine on")
    free_fractions = []
    inventory = gpu_module.discover()
    for card in inventory.gpus:
        if card.uuid in uuids:
            used = gpu_module.memory_used_bytes(card.uuid)
            free_fractions.append(1.0 - used / card.memory_total_bytes)
    share = round(min(free_fractions, default=0.0) * 0.8, 3)
    if share < 0.05:
        pytest.skip(f"the server leaves only {share:.0%} of GPU memory for a second engine")
    return share
