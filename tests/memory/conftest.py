"""The memory suite: leak tests carry ``leak``, boundary and startup-OOM tests carry ``oom``.

``small_kv_server`` launches one extra vLLM with a small KV cache and a small context, shared by
the boundary tests of a module, so limits are reached in seconds: 20 KV blocks (2,560 tokens on
CPU, where a block holds 128) and ``--max-model-len 512``. ``VLLM_CPU_KVCACHE_SPACE`` counts whole
GiB (1 GiB is about two million tokens of the built-in model), so the block count is capped with
``--num-gpu-blocks-override``, which vLLM applies on CPU as on GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_gpuinfer.plugin.ci import in_ci
from pytest_gpuinfer.plugin.fixtures import ServerFactory, gpuinfer_settings_of
from pytest_gpuinfer.targets import InferenceServer, TargetError

IN_CI = in_ci()
"""CI runs the short versions (fewer batches, smaller search ranges)."""

SMALL_MAX_MODEL_LEN = 512
SMALL_KV_BLOCKS = 20
SMALL_KV_ARGS = (
    "--max-model-len",
    str(SMALL_MAX_MODEL_LEN),
    "--num-gpu-blocks-override",
    str(SMALL_KV_BLOCKS),
)


HERE = Path(__file__).parent
"""This suite's folder (tests/memory in a checkout, pytest_gpuinfer/suites/memory installed)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark leak tests ``leak`` and boundary/startup tests ``oom``."""
    for item in items:
        if HERE not in item.path.parents:
            continue
        name = item.path.name
        if name.startswith(("test_oom", "test_startup")):
            item.add_marker(pytest.mark.oom)
        if name.startswith(("test_leak", "test_gpu_memory")):
            item.add_marker(pytest.mark.leak)


def require_launchable_vllm(config: pytest.Config) -> None:
    """Skip unless this run launches vLLM itself (an attached endpoint cannot be relaunched)."""
    settings = gpuinfer_settings_of(config)
    if settings.endpoint:
        pytest.skip(f"needs a launched vLLM; --endpoint {settings.endpoint} is attached")
    if settings.engine != "vllm":
        pytest.skip(f"needs --engine vllm to relaunch with other arguments (got {settings.engine})")


@pytest.fixture(scope="module")
def small_kv_server(
    pytestconfig: pytest.Config, server_factory: ServerFactory
) -> Iterator[InferenceServer]:
    """vLLM with a small KV cache and context, for one module's boundary searches."""
    require_launchable_vllm(pytestconfig)
    try:
        server = server_factory.launch(SMALL_KV_ARGS)
    except TargetError as exc:
        pytest.fail(f"the small-KV vLLM did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server_factory.stop(server)
