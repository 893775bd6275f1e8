"""Kill part of a real vLLM server mid-load (servers of this module's own, never the session's).

Stated verdicts: every request ends and every failure has a class; none counts as a success
without its whole answer (exact-length requests); the requests in flight at the kill are
counted; the time from the kill until a completion succeeds again (on the same server, or on a
restarted one once it is dead or unhealthy) is measured as MTTR and held to MAX_MTTR_S; once the
server is stopped nothing of its process group is left.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.faults.kill import engine_processes, group_processes, kill_role
from pytest_gpuinfer.faults.kill import time_until_serving as wait_serving
from pytest_gpuinfer.faults.outcome import count_outcome
from pytest_gpuinfer.load.client import Timeouts
from pytest_gpuinfer.load.runner import Limits, LoadResult, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import Poisson
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.targets import InferenceServer

TOKENS = 512
"""Long enough that requests are in flight at almost any moment; the kill also waits until the
engine reports one running (:func:`wait_until_running`)."""
MAX_MTTR_S = 240.0
"""A restart on 2 CPU cores takes 60-75 s when the machine is idle; four times that fails."""


class BackgroundLoad:
    """A load run on a thread, so the test can kill the server while requests are in flight."""

    def __init__(self, server: InferenceServer, duration_s: float) -> None:
        options = RunnerOptions(
            timeouts=Timeouts(5.0, 30.0, 60.0), preflight=False, gauge_interval_s=None
        )
        self.runner = LoadRunner(server.base_url, server.model, options=options)
        self.duration_s = duration_s
        self.result: LoadResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fault-load")

    def _run(self) -> None:
        try:
            # Open loop: after the kill, requests keep their schedule instead of retrying a
            # refused connection as fast as the loop can (a closed loop sent 189,000).
            self.result = self.runner.run(
                Poisson(6.0, max_concurrency=8),
                Prompts(output_tokens=TOKENS, ignore_eos=True),
                Limits(duration_s=self.duration_s),
            )
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> BackgroundLoad:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.thread.join(timeout=180)

    def records(self) -> Any:
        """The run's records (fails the test if the run itself broke)."""
        assert not self.thread.is_alive(), "the load run did not end within 180 s of the kill"
        assert self.error is None, f"the load run raised {self.error!r}"
        assert self.result is not None
        return self.result.records


def wait_until_running(server: InferenceServer, timeout_s: float = 10.0) -> None:
    """Return once the engine's /metrics shows a request running (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            text = httpx.get(f"{server.base_url}/metrics", timeout=2.0).text
        except httpx.HTTPError:
            text = ""
        for line in text.splitlines():
            if line.startswith("vllm:num_requests_running") and float(line.split()[-1]) >= 1:
                return
        time.sleep(0.05)


def healthy(server: InferenceServer) -> bool:
    """GET /health answers 200 within 5 s."""
    try:
        return httpx.get(f"{server.base_url}/health", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def spare(server_factory: Any) -> Iterator[list[InferenceServer]]:
    """Servers restarted by one test, for the next to kill (each launch costs about a minute)."""
    yield []


def test_kill_worker_mid_load_counts_losses_and_measures_mttr(
    server_factory: Any, spare: list[InferenceServer], record_property: Any
) -> None:
    server = server_factory.launch()
    assert server.process is not None and server.process.pid is not None
    leader = server.process.pid
    roles = engine_processes(leader)
    assert roles["worker"] or roles["engine_core"], f"no engine process found: {roles}"
    role = "worker" if roles["worker"] else "engine_core"
    with BackgroundLoad(server, duration_s=12.0) as load:
        time.sleep(3.0)
        wait_until_running(server)
        killed_perf = time.perf_counter()
        killed_at = time.monotonic()
        kill_role(leader, role, signal.SIGKILL)

        def restart() -> tuple[str, str]:
            server_factory.stop(server)
            replacement = server_factory.launch()
            spare.append(replacement)
            return replacement.base_url, replacement.model

        recovery = wait_serving(
            killed_at,
            server.base_url,
            server.model,
            dead=lambda: not server.alive() or not healthy(server),
            restart=restart,
            timeout_s=MAX_MTTR_S + 60,
        )
    records = load.records()
    outcome = count_outcome(records, expected_tokens=TOKENS)
    in_flight = [
        r for r in records if r.sent is not None and r.sent < killed_perf < (r.end or 1e18)
    ]
    print(f"killed {role}: {outcome.line()}; {len(in_flight)} in flight; {recovery.line()}")
    record_property("killed", role)
    record_property("in_flight_at_kill", len(in_flight))
    record_property("mttr_s", round(recovery.mttr_s, 1))
    assert outcome.problems() == [], outcome.problems()
    assert in_flight, "no request was in flight at the kill: the test did not test anything"
    assert outcome.failures >= 1, f"the {role} was killed mid-load, yet {outcome.line()}"
    assert recovery.mttr_s <= MAX_MTTR_S, recovery.line()
    if not recovery.restarted:  # the same server recovered: it must still be whole
        assert server.alive()
    pgid = leader
    server_factory.stop(server)
    assert group_processes(pgid) == [], "processes of the killed server outlived its stop"


def test_kill_api_server_mid_load_leaves_nothing_once_stopped(
    server_factory: Any, spare: list[InferenceServer], record_property: Any
) -> None:
    server = spare.pop() if spare else server_factory.launch()
    assert server.process is not None and server.process.pid is not None
    leader = server.process.pid
    # The load outlasts the kill whatever the wait takes (up to 3 + 10 s): with 8 s, one CI run
    # killed the API server after the load had ended, with nothing in flight to classify.
    with BackgroundLoad(server, duration_s=20.0) as load:
        time.sleep(3.0)
        wait_until_running(server)
        killed_perf = time.perf_counter()
        kill_role(leader, "api_server", signal.SIGKILL)
    records = load.records()
    outcome = count_outcome(records, expected_tokens=TOKENS)
    in_flight = [
        r for r in records if r.sent is not None and r.sent < killed_perf < (r.end or 1e18)
    ]
    time.sleep(5.0)
    orphans = [p.pid for p in group_processes(leader)]
    print(
        f"killed api_server: {outcome.line()}; {len(in_flight)} in flight; engine processes "
        f"still running 5 s later: {orphans}"
    )
    record_property("orphans_after_api_kill", len(orphans))
    assert outcome.problems() == [], outcome.problems()
    assert in_flight and outcome.failures >= len(in_flight), outcome.line()
    server_factory.stop(server)
    assert group_processes(leader) == [], "engine processes outlived the stop of their group"
