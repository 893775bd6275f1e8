"""Startup OOM: a launch with impossible memory settings fails fast, naming the reason.

On CPU the KV cache is asked to be larger than the machine's RAM (``VLLM_CPU_KVCACHE_SPACE``
in GiB); on a GPU, larger than the GPU (``--kv-cache-memory-bytes``). Outside CI a second case
asks for a KV cache too small for one sequence of the context. Either way the launch must end
within a bound in a ``TargetError``, and the reason read from the log must be about memory:
"engine failed to start: <reason from the log>", never a hang.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest

from pytest_gpuinfer.memory.startup import explain_startup_failure, is_memory_reason
from pytest_gpuinfer.plugin.state import RUN_STATE
from pytest_gpuinfer.targets import TargetError

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
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
    pytestconfig: pytest.Config, case: str
) -> None:
    state = pytestconfig.stash[RUN_STATE]
    settings = state.settings
    if settings.endpoint or settings.engine != "vllm":
        pytest.skip("needs a launched vLLM (not an attached endpoint or another engine)")
    engine_args, env = _impossible_settings(case, bool(state.gpus_in_use))
    began = time.monotonic()
    with pytest.raises(TargetError) as failure:
        server = state.manager.launch(engine_args=engine_args, env=env)
        state.manager.stop(server)
    elapsed = time.monotonic() - began
    message = str(failure.value)
    explained = explain_startup_failure(message)
    assert elapsed < STARTUP_BOUND_S, f"the failing launch took {elapsed:.0f} s"
    assert "exited" in message or "not ready" in message, message[:2000]
    assert is_memory_reason(explained), (
        f"the reason read from the log is not about memory: {explained}\n{message[-3000:]}"
    )
    print(f"{case}: {explained} (after {elapsed:.0f} s)")
