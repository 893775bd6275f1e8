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
from busy_machine import busy_machine_conftest

from pytest_gpuinfer.perf import baselines

GATE = """
from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import ClosedLoop
from pytest_gpuinfer.load.workloads import Prompts

def test_gate(load_runner, perf_baseline):
    result = load_runner.run(ClosedLoop(4), Prompts(output_tokens=8), Limits(requests=80))
    print(perf_baseline.check("gate", result))
"""
SIM = (
    "--engine=sim",
    "--engine-arg=--ttft-ms=20",
    "--engine-arg=--itl-ms=2",
    "--load-scale=0.3",  # the suite's gate at 60 requests a run: the logic, not the machine
    "-s",
)


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
        entry = baselines.scaled_entry(document["benchmarks"][0], factor)
        entry["extra_info"]["self_check"]["client_bound"] = False  # a yardstick, however busy
        doctored["benchmarks"] = [entry]
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


SUITE = Path(__file__).parents[1] / "perf" / "test_regression.py"


def test_suite_gate_without_a_baseline_reads_not_judged_and_fails_when_judgement_is_required(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_inner_regression=SUITE.read_text())
    storage = f"--benchmark-storage=file://{tmp_path}"
    plain = pytester.runpytest(*SIM, storage)
    plain.assert_outcomes(passed=1)
    plain.stdout.fnmatch_lines(
        [
            "other*1 passed*0/1 passed, 1 NOT JUDGED*",
            "NOT JUDGED (no baseline)  *regression latency c=4 in=128 out=32: this run: "
            "TTFT p95 * ms, * req/s; not compared: no --benchmark-compare*",
        ]
    )
    required = pytester.runpytest(*SIM, storage, "--gpuinfer-require-judgement")
    required.assert_outcomes(failed=1)
    required.stdout.fnmatch_lines(
        [
            "*judgement required (--gpuinfer-require-judgement), but NOT JUDGED:",
            "*NOT JUDGED (no baseline)  regression latency c=4 in=128 out=32: *TTFT p95 * ms*",
        ]
    )


def test_suite_gate_asked_to_compare_with_no_baseline_is_an_error(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_inner_regression=SUITE.read_text())
    result = pytester.runpytest(
        *SIM, f"--benchmark-storage=file://{tmp_path}", "--benchmark-compare"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*--benchmark-compare: no stored baseline to compare 'latency c=4 in=128 out=32' "
            "with (none in *gpuinfer*); store one first with --benchmark-save*"
        ]
    )


def test_suite_gate_fails_against_a_faster_stored_baseline_naming_the_figures(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_inner_regression=SUITE.read_text())
    storage = f"--benchmark-storage=file://{tmp_path}"
    _store_faster_baseline(pytester, storage, tmp_path)
    result = pytester.runpytest(*SIM, storage, "--benchmark-compare=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*regression check of latency c=4 in=128 out=32 against *0002_doctored.json*",
            "metric * baseline * current * change * noise test * verdict",
            "* ms * ms *+*% * REGRESSED",
        ]
    )


def _store_faster_baseline(
    pytester: pytest.Pytester, storage: str, tmp_path: Path, *, flagged: bool = False
) -> None:
    """A stored run of the suite's gate, doctored 50 % faster (a comparison that deserves to
    fail), as 0002; ``flagged`` marks it as a run the self-check flagged."""
    pytester.runpytest(*SIM, storage, "--benchmark-save=base").assert_outcomes(passed=1)
    (stored,) = tmp_path.glob("gpuinfer/*/0001_base.json")
    document = json.loads(stored.read_text())
    entry = baselines.scaled_entry(document["benchmarks"][0], 0.5)
    assert "client_bound" in entry["extra_info"]["self_check"]  # stored with the run
    entry["extra_info"]["self_check"].update(  # a yardstick, however busy the saving run was
        client_bound=flagged, reasons=["machine busy (old)"] if flagged else []
    )
    document["benchmarks"] = [entry]
    stored.with_name("0002_doctored.json").write_text(json.dumps(document))


def test_suite_gate_does_not_judge_a_starved_run_and_skips_naming_it(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Against a baseline 50 % faster, a run whose client the self-check flags in both attempts
    is not judged REGRESSED: it is measured again, then skipped as too noisy, naming the
    flag; with --gpuinfer-require-judgement it fails."""
    pytester.makepyfile(test_inner_regression=SUITE.read_text())
    storage = f"--benchmark-storage=file://{tmp_path}"
    _store_faster_baseline(pytester, storage, tmp_path)
    pytester.makeconftest(busy_machine_conftest(100))
    starved = pytester.runpytest(*SIM, storage, "--benchmark-compare=2", "-rs")
    starved.assert_outcomes(skipped=1)
    starved.stdout.fnmatch_lines(
        [
            "other*1 skipped*0/4 passed, 4 NOT JUDGED*2 load runs*",  # measured again
            "NOT JUDGED (too noisy)  *regression ttft.p95: ttft.p95 regressed: * ms vs baseline "
            "* ms (+*%*; not judged: the load engine's self-check flagged this run*",
            "SKIPPED*too noisy to judge*regression ttft.p95: *not judged: the load engine's "
            "self-check flagged this run*",
        ]
    )
    required = pytester.runpytest(
        *SIM, storage, "--benchmark-compare=2", "--gpuinfer-require-judgement"
    )
    required.assert_outcomes(failed=1)
    required.stdout.fnmatch_lines(["*NOT JUDGED (too noisy)  regression ttft.p95: *"])


def test_suite_gate_measures_again_after_a_starved_attempt_and_then_judges(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """The self-check flags only the first attempt (its warm-up is part of the run): the retry,
    unflagged, is compared with the faster baseline and fails REGRESSED."""
    pytester.makepyfile(test_inner_regression=SUITE.read_text())
    storage = f"--benchmark-storage=file://{tmp_path}"
    _store_faster_baseline(pytester, storage, tmp_path)
    pytester.makeconftest(busy_machine_conftest(1))
    result = pytester.runpytest(*SIM, storage, "--benchmark-compare=2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "attempt 1 not used: the self-check flagged it (machine busy (test))*",
            "*regression check of latency c=4 in=128 out=32 against *0002_doctored.json*",
            "* ms * ms *+*% * REGRESSED",
        ]
    )


def test_suite_gate_does_not_judge_against_a_baseline_whose_run_was_flagged(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A stored baseline whose run the self-check flagged is no yardstick: compared with it, a
    run reads NOT JUDGED naming the baseline's flag, and the test is skipped, not passed."""
    pytester.makepyfile(test_inner_regression=SUITE.read_text())
    storage = f"--benchmark-storage=file://{tmp_path}"
    _store_faster_baseline(pytester, storage, tmp_path, flagged=True)
    result = pytester.runpytest(*SIM, storage, "--benchmark-compare=2", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "other*1 skipped*0/4 passed, 4 NOT JUDGED*",
            "NOT JUDGED (too noisy)  *regression ttft.p95: *; not judged: the load engine's "
            "self-check flagged the baseline's run*",
        ]
    )
