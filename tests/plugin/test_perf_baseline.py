"""The regression gate through pytest-benchmark's options, against the simulator (pytester).

A run saved with ``--benchmark-save`` becomes the baseline of this machine identity; a later run
with ``--benchmark-compare=N`` fails against a copy doctored 50 % faster (with the old-vs-new
table) and passes against one doctored 4x slower (a margin no stall of a busy machine eats).
The simulator checks the gate's logic only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_gpuinfer.perf import baselines

GATE = """
def test_gate(load_runner, perf_baseline):
    result = load_runner.run(concurrency=4, requests=80, max_tokens=8)
    print(perf_baseline.check("gate", result))
"""
SIM = ("--engine=sim", "--engine-arg=--ttft-ms=20", "--engine-arg=--itl-ms=2", "-s")


def test_save_then_compare_with_doctored_baselines(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(GATE)
    storage = f"--benchmark-storage=file://{tmp_path}"
    saved = pytester.runpytest(*SIM, storage, "--benchmark-save=base")
    saved.assert_outcomes(passed=1)
    saved.stdout.fnmatch_lines(["*baseline saved: *0001_base.json"])
    (first,) = tmp_path.glob("gpuinfer/*/0001_base.json")
    document = json.loads(first.read_text())
    for number, factor in ((2, 0.5), (3, 4.0)):
        doctored = dict(document)
        doctored["benchmarks"] = [baselines.scaled_entry(document["benchmarks"][0], factor)]
        first.with_name(f"000{number}_doctored.json").write_text(json.dumps(doctored))

    faster = pytester.runpytest(*SIM, storage, "--benchmark-compare=2")
    faster.assert_outcomes(failed=1)
    faster.stdout.fnmatch_lines(
        [
            "*regression check of gate against *0002_doctored.json (tolerance 10%)",
            "*metric * baseline * current * change * noise test * verdict",
            "* REGRESSED",
        ]
    )
    slower = pytester.runpytest(*SIM, storage, "--benchmark-compare=3")
    slower.assert_outcomes(passed=1)
    slower.stdout.fnmatch_lines(["*ttft.p95 * ok", "*throughput * ok"])
