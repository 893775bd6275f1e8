"""The locustfile against the real engine: standalone and distributed (one master, two workers),
each bounded in time, with its CSV statistics read back."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_gpuinfer.load.locust_process import LocustRun
from pytest_gpuinfer.load.shapes import standard_shape
from pytest_gpuinfer.load.workloads import samples
from pytest_gpuinfer.plugin.extras import install_hint

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason=f"locust is not installed: {install_hint('locust')}",
)  # found, never imported: locust patches the standard library with gevent


def _check(run: LocustRun) -> None:
    """Zero failures, the run ended by itself, and E2E, TTFT and ITL percentiles present."""
    print(f"\n{run.text()}")
    assert not run.timed_out, f"locust did not stop within its bound:\n{run.text()}"
    assert run.returncode == 0, f"locust exited {run.returncode}:\n{run.text()}"
    assert run.total_failures == 0, run.text()
    for kind in ("POST", "TTFT", "ITL"):
        row = run.row(kind)
        assert row is not None and row.requests > 0, f"no {kind} entries:\n{run.text()}"
        assert row.percentiles.get("95%") is not None, f"no {kind} p95:\n{run.text()}"
    ttft, e2e = run.row("TTFT"), run.row("POST")
    assert ttft is not None and e2e is not None
    assert ttft.median_ms is not None and e2e.median_ms is not None
    assert ttft.median_ms <= e2e.median_ms


def test_locust_headless_standalone(locust_run: Callable[..., LocustRun]) -> None:
    _check(locust_run(LOCUSTFILE, run_time_s=5, users=2, spawn_rate=2))


def test_locust_distributed_master_and_two_workers(
    locust_run: Callable[..., LocustRun],
) -> None:
    run = locust_run(LOCUSTFILE, run_time_s=6, users=4, spawn_rate=4, workers=2)
    _check(run)
    assert set(run.logs) == {"master", "worker1", "worker2"}


def test_locust_follows_a_burst_shape(
    locust_run: Callable[..., LocustRun], baseline_rps: float, load_scale: float
) -> None:
    baseline_rps = float(f"{baseline_rps:.3f}")  # as the locustfile reads it from its environment
    env = {"GPUINFER_BASELINE_RPS": f"{baseline_rps:.3f}", "GPUINFER_LOAD_SCALE": str(load_scale)}
    shape = standard_shape("spike5x", baseline_rps, scale=load_scale)
    run = locust_run(LOCUSTFILE, run_time_s=shape.duration_s + 5, shape="spike5x", env=env)
    _check(run)
    # The locustfile runs ceil(rate / 1 req/s) users: the baseline count, then 5x the rate.
    base_users, peak_users = math.ceil(baseline_rps), math.ceil(5 * baseline_rps)
    counts = run.user_counts()
    assert peak_users in counts, f"users never reached the spike's {peak_users}: {counts}"
    first_peak = counts.index(peak_users)
    assert base_users in counts[:first_peak], (
        f"no sample at the baseline's {base_users} users before the spike: {counts}"
    )
    assert max(counts) == peak_users, f"more users than the spike asks for: {counts}"
    assert any(c < peak_users for c in counts[first_peak:]), f"the spike never ended: {counts}"


def test_locust_sends_a_dataset_workload(
    locust_run: Callable[..., LocustRun], tmp_path: Path
) -> None:
    """GPUINFER_WORKLOAD: locust's users send the rows of a ShareGPT file, as the load engine
    does (each with its own prompt and output length)."""
    path = samples.write_sharegpt(tmp_path / "sharegpt.json", 12)
    env = {"GPUINFER_WORKLOAD": f"dataset:path={path},ignore_eos=true"}
    _check(locust_run(LOCUSTFILE, run_time_s=5, users=2, spawn_rate=2, env=env))
