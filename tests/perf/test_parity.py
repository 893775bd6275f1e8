"""This suite's load engine and ``vllm bench serve`` side by side on the same server and workload.

Both send prompts of the same length in the target's tokens (vLLM's random dataset and our exact
prompts count the same way), the same output length with ``ignore_eos``, at the same concurrency.
The test fails when the workloads differ (prompt or output tokens per request, failures); the
throughput/TTFT agreement is printed, not asserted, because one short pair on a shared machine
cannot decide it (bench/bench_parity.py alternates several pairs and measures server CPU).
"""

from __future__ import annotations

import pytest

from pytest_gpuinfer.perf import parity
from pytest_gpuinfer.plugin.extras import require
from pytest_gpuinfer.plugin.perf_fixtures import PerfSizes
from pytest_gpuinfer.targets import InferenceServer


def test_side_by_side_with_vllm_bench_serve(
    inference_server: InferenceServer, perf_sizes: PerfSizes
) -> None:
    """Same workload through both tools; figures printed side by side; workloads must match."""
    if inference_server.engine != "vllm":
        pytest.skip(
            f"vllm bench serve is compared against vLLM only, not {inference_server.engine}"
        )
    if not inference_server.model_path:
        pytest.skip("vllm bench serve needs the model's tokenizer files (a launched server)")
    require("vllm.benchmarks.serve", "vLLM's benchmark module")
    workload = parity.ParityWorkload(
        input_len=128, output_len=64, concurrency=16, num_prompts=perf_sizes.parity_requests
    )
    prompt_set = parity.workload_prompts(
        inference_server.base_url,
        inference_server.model,
        workload,
        tokenizer_dir=inference_server.model_path,
    )
    pid = inference_server.process.pid if inference_server.process else None
    with parity.ServerCPU(pid) as cpu:
        theirs = parity.run_vllm_bench(
            inference_server.base_url, inference_server.model, inference_server.model_path, workload
        )
    theirs = parity.with_cpu(theirs, cpu)
    with parity.ServerCPU(pid) as cpu:
        ours, _ = parity.run_gpuinfer(
            inference_server.base_url, inference_server.model, workload, prompt_set
        )
    ours = parity.with_cpu(ours, cpu)
    print()
    print(prompt_set.describe())
    print(parity.side_by_side([theirs, ours]))
    print(f"single pair (indicative only): {parity.judge([ours], [theirs]).message}")
    assert ours.failed == 0 and theirs.failed == 0, "a tool saw failed requests"
    assert ours.completed == theirs.completed == workload.num_prompts
    assert ours.output_tokens_mean == theirs.output_tokens_mean == workload.output_len, (
        "output lengths differ: ignore_eos did not hold for one of the tools"
    )
    gap = abs(ours.prompt_tokens_mean - theirs.prompt_tokens_mean)
    assert gap <= 0.05 * theirs.prompt_tokens_mean, (
        f"prompt tokens per request differ: {ours.prompt_tokens_mean:.1f} here vs "
        f"{theirs.prompt_tokens_mean:.1f} from vllm bench serve"
    )
