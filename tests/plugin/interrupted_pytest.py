"""A pytest run in a process of its own, for the tests that interrupt one as a user would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def pytest_process(args: Sequence[str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """``python -m pytest -p no:cacheprovider ARGS`` in a session of its own, output piped;
    killed and reaped on leaving the block if it still runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # A shell that backgrounds us leaves SIGINT ignored, and Python keeps it so; a user's
        # terminal does not. Restore the default so Ctrl-C behaves as it does for users.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_for_flag(
    proc: subprocess.Popen[str], flag: Path, what: str, timeout_s: float = 60
) -> None:
    """Wait until the run writes ``flag``; fail with its output if it ends first, or naming
    ``what`` never started after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.1)
