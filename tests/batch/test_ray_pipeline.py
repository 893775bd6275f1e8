"""A Ray Data pipeline over vLLM, end to end: every row accounted for, figures, nothing left.

Runs on a local Ray instance (``ray.init(num_cpus=2)``) by default; with ``--ray-address`` the
same pipeline runs on that cluster instead. A replica that asks for more GPUs than any node has
must fail within its time limit, naming the resource it waited for.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from pytest_gpuinfer.batch.engines import BatchJob
from pytest_gpuinfer.batch.results import BatchTimeout

PROMPT_TOKENS = 16
OUTPUT_TOKENS = 16


def test_ray_pipeline_accounts_for_every_row(
    batch_engines, batch_rows, batch_settings, batch_report
):
    """A few hundred exact-length prompts through Ray Data: rows/s, tokens/s, every row once."""
    count = batch_settings.size(200, 400)
    rows = batch_rows(count, PROMPT_TOKENS)
    engine = batch_engines.start("ray")
    result = engine.run(
        BatchJob(rows, max_tokens=OUTPUT_TOKENS, batch_size=32, replicas=1, time_limit_s=420)
    )
    assert result.check.ok, result.check.describe()
    assert result.completed_rows == count
    assert result.output_tokens == count * OUTPUT_TOKENS
    assert result.rows_per_s > 0 and result.output_tokens_per_s > 0
    assert result.first_result_s is not None and result.first_result_s <= result.wall_s
    assert result.engine_s is not None and 0 < result.engine_s <= result.wall_s * 1.05
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 0
    if not batch_settings.ray_address:
        # Ray Data's own per-operator times (local runs; a cluster may report them too).
        assert any("VllmBatchActor" in name for name in result.stages), result.stages
    summary = result.summary()
    assert summary.completed == count and summary.failed == 0
    seen = engine.observed_processes
    leftovers = engine.close()
    result.leftovers = leftovers
    batch_report("ray-pipeline", result)
    assert leftovers.clean, leftovers.describe()
    assert seen, "the run's processes were not observed"
    alive = [pid for pid, created in seen if _same_process(pid, created)]
    assert not alive, f"processes of the run still alive: {alive}"
    assert not [f for f in leftovers.removed_shm_files if Path(f).exists()]


def _same_process(pid: int, created: float) -> bool:
    """True when ``pid`` still runs and is the same process (same start time)."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_impossible_resource_request_fails_naming_it(batch_engines, batch_rows, batch_settings):
    """A replica asking for 64 GPUs never schedules: the job fails in its limit, naming GPU."""
    if batch_settings.ray_address:
        pytest.skip("runs on the local Ray instance only (a real cluster may autoscale)")
    limit = 15.0
    engine = batch_engines.start("ray")
    began = time.monotonic()
    with pytest.raises(BatchTimeout) as failure:
        engine.run(
            BatchJob(
                batch_rows(4, PROMPT_TOKENS),
                max_tokens=4,
                batch_size=4,
                time_limit_s=limit,
                num_gpus=64,
            )
        )
    elapsed = time.monotonic() - began
    assert elapsed < limit + 20, f"the failure took {elapsed:.0f} s for a {limit:.0f} s limit"
    message = str(failure.value)
    assert failure.value.waiting_for and "GPU" in failure.value.waiting_for, message
    assert "64" in failure.value.waiting_for, message
    leftovers = engine.close()
    assert leftovers.clean, leftovers.describe()


def test_ray_data_llm_processor(batch_engines, batch_rows, batch_settings, batch_report):
    """``ray.data.llm``'s processor (CPU-only bundles, 0.1-CPU helper stages): every row once."""
    if batch_settings.ci:
        pytest.skip("outside CI only: ray.data.llm was measured slower than map_batches (budget)")
    count = 100
    engine = batch_engines.start("ray-llm")
    result = engine.run(
        BatchJob(batch_rows(count, PROMPT_TOKENS), max_tokens=OUTPUT_TOKENS, time_limit_s=420)
    )
    assert result.check.ok, result.check.describe()
    assert result.output_tokens == count * OUTPUT_TOKENS
    result.leftovers = engine.close()
    batch_report("ray-data-llm", result)
    assert result.leftovers.clean, result.leftovers.describe()
