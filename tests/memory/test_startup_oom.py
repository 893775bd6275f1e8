"""Startup OOM: a launch with impossible memory settings fails fast, naming the reason.

On CPU the KV cache is asked to be larger than the machine's RAM (``VLLM_CPU_KVCACHE_SPACE``
in GiB); on a GPU, larger than the GPU (``--kv-cache-memory-bytes``). Outside CI a second case
asks for a KV cache too small for one sequence of the context. Either way the launch must end
within a bound in a ``TargetError``, and the reason read from the log must be about memory:
"engine failed to start: <reason from the log>", never a hang.
"""

from __future__ import annotations

import time

import psutil
import pytest

from pytest_gpuinfer.hardware.gpu import GPUInventory
from pytest_gpuinfer.plugin.ci import in_ci
from pytest_gpuinfer.plugin.fixtures import ServerFactory
from pytest_gpuinfer.plugin.options import Settings
from pytest_gpuinfer.targets import TargetError
from pytest_gpuinfer.targets.startup_failure import is_memory_reason

IN_CI = in_ci()
STARTUP_BOUND_S = 300.0
"""A failing launch must be over within this (a healthy start takes about 60 s on 2 cores)."""


def _impossible_settings(case: str, has_gpu: bool) -> tuple[tuple[str, ...], dict[str, str]]:
    """Engine arguments and environment for one impossible-memory case."""
    if case == "too-small":
        return ("--max-model-len", "1024", "--num-gpu-blocks-override", "1"), {}
    if has_gpu:
        return ("--kv-cache-memory-bytes", str(100 * 2**40)), {}
    ram_gib = psutil.virtual_memory().total // 2**30
    return (), {"VLLM_CPU_KVCACHE_SPACE": str(ram_gib * 4)}


CASES = ["larger-than-memory"] if IN_CI else ["larger-than-memory", "too-small"]


@pytest.mark.parametrize("case", CASES)
def test_impossible_kv_cache_fails_fast_with_the_reason(
    gpuinfer_settings: Settings,
    gpu_inventory: GPUInventory,
    server_factory: ServerFactory,
    case: str,
) -> None:
    if gpuinfer_settings.engine != "vllm":
        pytest.skip("needs a launched vLLM (not an attached endpoint or another engine)")
    engine_args, env = _impossible_settings(case, gpu_inventory.has_gpu)
    began = time.monotonic()
    with pytest.raises(TargetError) as failure:
        server_factory.stop(server_factory.launch(engine_args, env))
    elapsed = time.monotonic() - began
    message = str(failure.value)
    first_line = message.splitlines()[0]
    assert elapsed < STARTUP_BOUND_S, f"the failing launch took {elapsed:.0f} s"
    assert "exited" in first_line or "not ready" in first_line, message[:2000]
    assert "engine failed to start: " in first_line, message[-3000:]
    explained = first_line.split("engine failed to start: ", 1)[1]
    assert is_memory_reason(explained), (
        f"the reason read from the log is not about memory: {explained}\n{message[-3000:]}"
    )
    print(f"{case}: {explained} (after {elapsed:.0f} s)")
