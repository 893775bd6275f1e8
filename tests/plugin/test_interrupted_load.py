"""An interrupted load run ends with its one message: no stray errors from the event loop."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from interrupted_pytest import pytest_process, wait_for_flag

LONG_LOAD = """
import pathlib
from pytest_gpuinfer.load.runner import Limits
from pytest_gpuinfer.load.schedule import Poisson
from pytest_gpuinfer.load.workloads import Prompts

def test_long_load(load_runner):
    pathlib.Path({flag!r}).write_text("up")
    load_runner.run(Poisson(50), Prompts(output_tokens=16), Limits(duration_s=120))
"""

STRAY = (
    "no running event loop",
    "Task was destroyed",
    "Exception ignored",
    "Event loop is closed",
    "Fatal error on transport",
)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_interrupted_load_run_ends_with_one_message(
    pytester: pytest.Pytester, tmp_path: Path, signame: str
) -> None:
    flag = tmp_path / "load-started"
    pytester.makepyfile(LONG_LOAD.format(flag=str(flag)))
    with pytest_process(["--engine=sim", "-q"], pytester.path) as proc:
        wait_for_flag(proc, flag, "the load test")
        time.sleep(2.0)  # mid-run: requests in flight
        sent = time.monotonic()
        proc.send_signal(getattr(signal, signame))
        output, _ = proc.communicate(timeout=30)
        ended_s = time.monotonic() - sent
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in output, output[-2000:]
    stray = [text for text in STRAY if text in output]
    assert not stray, f"after {signame}, stray errors {stray}:\n{output[-3000:]}"
    assert ended_s < 15, f"took {ended_s:.1f} s to end after {signame}"
