"""Speculative decoding: greedy outputs of a server decoding speculatively equal those of the
same model without it, and the engine's counters show drafted and accepted tokens.

The target is compared with a second server launched beside it with vLLM's n-gram prompt lookup
(``--speculative-config``; no draft model, works on the CPU build and on GPUs). Needs a vLLM
launched by this run; runs last (it starts a second engine, about a minute here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from pytest_gpuinfer.compat import caching
from pytest_gpuinfer.compat.target import CompatTarget
from pytest_gpuinfer.plugin.compat_outcomes import judge, require
from pytest_gpuinfer.plugin.fixtures import ServerFactory
from pytest_gpuinfer.targets import InferenceServer, TargetError

from .engine_env import sibling_memory_flags


@pytest.fixture(scope="module")
def speculative_server(
    inference_server: InferenceServer, server_factory: ServerFactory, pytestconfig: pytest.Config
) -> Iterator[InferenceServer]:
    """The run's model served again with n-gram speculative decoding."""
    if inference_server.engine != "vllm" or not inference_server.launched:
        pytest.skip(
            "speculative decoding is compared on a second vLLM server launched beside the "
            f"target; the target is {inference_server.engine!r}"
            f"{'' if inference_server.launched else ' (not launched here)'}"
        )
    with httpx.Client(
        base_url=inference_server.base_url, headers=inference_server.auth_headers()
    ) as client:
        already = caching.SPEC_DRAFTS in caching.counters(client)
    if already:
        pytest.skip(
            "the target already decodes speculatively; the comparison launches the speculative "
            "side, so run it against a target without --speculative-config"
        )
    config = json.dumps(caching.NGRAM_SPECULATION)
    # On a GPU the second engine gets the memory the target leaves (it skips when too little:
    # serve the target with a lower --gpu-memory-utilization to run this check there).
    memory = sibling_memory_flags(inference_server, pytestconfig)
    try:
        server = server_factory.launch(["--speculative-config", config, *memory])
    except TargetError as exc:
        pytest.fail(
            f"a server with --speculative-config {config} did not start: {exc}", pytrace=False
        )
    yield server
    server_factory.stop(server)


def test_speculative_decoding_keeps_greedy_outputs(
    compat_target: CompatTarget, speculative_server: InferenceServer
) -> None:
    """Outputs with speculative decoding equal those without; drafts were made and accepted."""
    require(compat_target.probe.completions())
    with httpx.Client(
        base_url=speculative_server.base_url,
        headers=speculative_server.auth_headers(),
        timeout=httpx.Timeout(120.0, connect=5.0),
    ) as client:
        judge(
            caching.speculative_identical(
                compat_target.client, compat_target.model, client, speculative_server.model
            )
        )
