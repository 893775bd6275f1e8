"""The batch worker process: owns one engine (vLLM offline or a Ray session) and runs jobs.

Started by :class:`pytest_gpuinfer.batch.engines.BatchEngine` as
``python -m pytest_gpuinfer.batch.worker SPEC_JSON`` in a session of its own. It loads the engine,
says ``ready``, then runs each job read from stdin under a watchdog: past the job's time limit the
watchdog asks the engine what it is waiting for, reports a ``deadline`` error and interrupts the
job. vLLM starts its processes with spawn, which re-imports the main module: everything runs
under the ``__main__`` guard below.
"""

from __future__ import annotations

import _thread
import json
import os
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from pytest_gpuinfer.batch.wire import (
    DEADLINE,
    EVENT_FD_ENV,
    FAILED,
    REJECTED,
    JobDeadline,
    RowRejected,
)


class Events:
    """Writes one JSON event per line to the driver's pipe."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        """Send ``event`` with ``fields``."""
        with self._lock:
            self._stream.write(json.dumps({"event": event, **fields}) + "\n")
            self._stream.flush()


class Watchdog:
    """Past ``deadline``: note what the engine waits for, then interrupt the main thread."""

    def __init__(self, deadline: float, runner: Any) -> None:
        self.diagnosis: str | None = None
        self.fired = False
        self._runner = runner
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(deadline,), daemon=True)
        self._thread.start()

    def _watch(self, deadline: float) -> None:
        """Wait for the deadline (or cancellation)."""
        if self._cancel.wait(max(0.0, deadline - time.monotonic())):
            return
        try:
            self.diagnosis = self._runner.diagnose()
        except Exception as exc:
            self.diagnosis = f"(diagnosis failed: {exc})"
        self.fired = True
        _thread.interrupt_main()

    def cancel(self) -> None:
        """The job ended in time."""
        self._cancel.set()


def _runner(spec: dict[str, Any]) -> Any:
    """The engine the spec asks for."""
    if spec["mode"] == "offline":
        from pytest_gpuinfer.batch.offline import OfflineRunner

        return OfflineRunner(spec)
    from pytest_gpuinfer.batch.ray_pipeline import RayRunner

    return RayRunner(spec)


def run_job(runner: Any, job: dict[str, Any], events: Events) -> None:
    """Run one job under its watchdog and send its result or error."""
    limit = float(job["time_limit_s"])
    # The watchdog fires a little before the driver's own hard limit, so there is time to report.
    deadline = time.monotonic() + limit
    watchdog = Watchdog(deadline + 0.5, runner)
    try:
        result = runner.run(job, deadline)
        watchdog.cancel()
        events.send("result", **result)
    except (KeyboardInterrupt, JobDeadline) as exc:
        watchdog.cancel()
        detail = str(exc) if isinstance(exc, JobDeadline) else "interrupted at the deadline"
        events.send(
            "error",
            kind=DEADLINE,
            message=f"job passed its {limit:.0f} s limit: {detail}",
            waiting_for=watchdog.diagnosis or None,
        )
    except RowRejected as exc:
        watchdog.cancel()
        events.send("error", kind=REJECTED, message=str(exc))
    except Exception as exc:
        watchdog.cancel()
        events.send(
            "error",
            kind=FAILED,
            message=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc()[-3000:],
        )


def main() -> int:
    """Load the engine, then run jobs from stdin until ``close``."""
    spec = json.loads(sys.argv[1])
    events = Events(os.fdopen(int(os.environ[EVENT_FD_ENV]), "w", buffering=1))
    started = time.monotonic()
    try:
        runner = _runner(spec)
    except BaseException as exc:
        events.send(
            "error", kind=FAILED, message=f"engine did not start: {type(exc).__name__}: {exc}"
        )
        return 2
    events.send("ready", start_s=time.monotonic() - started, engine=runner.name)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("cmd") == "close":
                break
            run_job(runner, command["job"], events)
    finally:
        closing = time.monotonic()
        runner.close()
        events.send("closed", close_s=time.monotonic() - closing)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
