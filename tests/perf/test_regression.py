"""Regression gate: a run against a stored baseline of the same machine identity.

With pytest-benchmark's ``--benchmark-save``/``--benchmark-autosave`` the run is stored as a
baseline; with ``--benchmark-compare[=NUM]`` it is compared with the stored one and fails on a
regression (worse beyond the tolerance and beyond noise). The test also proves the gate on the
spot: the run passes against itself and fails against a copy doctored 50 % faster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_gpuinfer.perf import baselines
from pytest_gpuinfer.plugin.perf_fixtures import PerfBaseline, PerfWorkload, machine_identity

CONCURRENCY = 4
PROMPT_TOKENS = 128
OUTPUT_TOKENS = 32


def test_regression_gate(
    load_runner: Any,
    perf_workload: PerfWorkload,
    perf_baseline: PerfBaseline,
    pytestconfig: Any,
    tmp_path: Path,
) -> None:
    """Saved then compared with itself: passes; with a 50 % faster copy: REGRESSED with a table."""
    result = load_runner.run(
        concurrency=CONCURRENCY,
        requests=60,
        warmup_s=0.5,
        **perf_workload.run_kwargs(PROMPT_TOKENS, OUTPUT_TOKENS),
    )
    name = f"latency c={CONCURRENCY} in={PROMPT_TOKENS} out={OUTPUT_TOKENS}"
    identity = machine_identity(pytestconfig, perf_baseline.server, name)
    saved = baselines.save(tmp_path, identity, [baselines.baseline_entry(name, result)], "self")
    entry = baselines.load_entry(saved, name)
    assert entry is not None and baselines.find(tmp_path, identity) == saved
    same = baselines.compare(name, result, entry, baseline_path=str(saved))
    faster = baselines.compare(
        name, result, baselines.scaled_entry(entry, 0.5), baseline_path="doctored"
    )
    print()
    print(same.table())
    print(faster.table())
    assert not same.regressed, same.table()
    assert faster.regressed, "a baseline 50 % faster was not flagged:\n" + faster.table()
    print(perf_baseline.check(name, result, configuration=name))
