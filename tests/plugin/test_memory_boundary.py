"""The OOM boundary search and its probe classification, against scripted targets."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from pytest_gpuinfer.memory.boundary import (
    GRACEFUL,
    Outcome,
    ProbeResult,
    class_verdict,
    format_table,
    recommend_batch,
    search_boundary,
    worst,
)
from pytest_gpuinfer.memory.http_probes import OpenAIBoundaryProbes


def threshold_probe(limit: int, outcome: Outcome = Outcome.CLIENT_ERROR):
    """A target that handles values up to ``limit`` and fails above with ``outcome``."""
    tried: list[int] = []

    def probe(value: int) -> ProbeResult:
        tried.append(value)
        return ProbeResult(value, Outcome.OK if value <= limit else outcome)

    probe.tried = tried  # type: ignore[attr-defined]
    return probe


@pytest.mark.parametrize("limit", [1, 2, 37, 511, 512, 1000])
def test_search_finds_the_exact_limit_in_logarithmic_probes(limit: int) -> None:
    probe = threshold_probe(limit)
    canaries: list[bool] = []
    result = search_boundary(
        "x", probe, start=1, max_value=1024, canary=lambda: canaries.append(True) or True
    )
    assert result.safe_value == limit
    failure = result.first_failure
    assert failure is not None and failure.value == limit + 1
    assert failure.outcome is Outcome.CLIENT_ERROR and result.exact
    assert result.probe_count <= math.log2(1024) + 1 + math.log2(1024)
    assert result.probe_count == len(probe.tried)  # type: ignore[attr-defined]
    assert len(canaries) == sum(1 for p in result.probes if p.outcome.failed)


def test_nothing_fails_up_to_max_and_start_failing() -> None:
    clear = search_boundary("x", threshold_probe(10_000), start=4, max_value=100)
    assert clear.first_failure is None and clear.safe_value == 100 and clear.exact
    assert [p.value for p in clear.probes] == [4, 8, 16, 32, 64, 100]
    assert "none up to 100" in clear.row()
    low = search_boundary("x", threshold_probe(2, Outcome.TIMEOUT), start=8, max_value=64)
    assert low.safe_value == 2 and low.first_failure and low.first_failure.value == 3
    assert low.first_failure.outcome is Outcome.TIMEOUT


def test_not_recoverable_stops_with_the_log_tail() -> None:
    probe = threshold_probe(20, Outcome.CRASH)
    result = search_boundary(
        "batch size", probe, start=1, max_value=64, canary=lambda: False,
        log_tail=lambda: "EngineCore died: out of memory",
    )  # fmt: skip
    assert not result.recoverable
    assert result.probe_count == 6  # 1..32, stopped at the first failure
    text = result.describe()
    assert "not recoverable" in text and "EngineCore died: out of memory" in text
    assert "NOT RECOVERABLE" in format_table([result])


def test_probe_budget_is_respected() -> None:
    result = search_boundary("x", threshold_probe(700), start=1, max_value=1024, max_probes=5)
    assert result.probe_count == 5 and result.stopped_reason == "probe budget of 5 spent"


def test_worst_outcome_and_recommendation() -> None:
    assert worst([Outcome.OK, Outcome.PREEMPTION_STORM, Outcome.CLIENT_ERROR]) is (
        Outcome.CLIENT_ERROR
    )
    assert worst([Outcome.SERVER_ERROR, Outcome.CRASH]) is Outcome.CRASH
    assert worst([]) is Outcome.OK
    result = search_boundary(
        "batch size", threshold_probe(30, Outcome.PREEMPTION_STORM), start=1, max_value=64
    )
    text = recommend_batch(result)
    assert "largest safe batch size: 30" in text and "Recommended: 24" in text
    assert "preemption storm" in text


def scripted_server(statuses: dict[int, int], *, health: int = 200) -> httpx.MockTransport:
    """A transport answering completions by max_tokens (status), and /health."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(health)
        body = json.loads(request.content)
        tokens = int(body["max_tokens"])
        if tokens == 999:
            raise httpx.ReadTimeout("scripted timeout", request=request)
        if tokens == 998:
            raise httpx.ConnectError("scripted refusal", request=request)
        status = statuses.get(tokens, 200)
        if status == 200:
            return httpx.Response(200, json={"choices": [{"text": "x"}]})
        return httpx.Response(status, json={"error": {"message": f"scripted {status}"}})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("max_tokens", "health", "expected"),
    [
        (1, 200, Outcome.OK),
        (2, 200, Outcome.CLIENT_ERROR),
        (3, 200, Outcome.SERVER_ERROR),
        (999, 200, Outcome.TIMEOUT),
        (998, 200, Outcome.SERVER_ERROR),  # connection dropped, server still healthy
        (998, 503, Outcome.CRASH),
        (3, 503, Outcome.CRASH),
    ],
)
def test_http_probe_classification(max_tokens: int, health: int, expected: Outcome) -> None:
    probes = OpenAIBoundaryProbes(
        "http://scripted", "m", transport=scripted_server({2: 400, 3: 500}, health=health),
        preemptions=lambda: 0.0,
    )  # fmt: skip
    result = probes.max_tokens_probe("hi")(max_tokens)
    assert result.outcome is expected, result
    if expected is Outcome.CLIENT_ERROR:
        assert "scripted 400" in result.detail


def test_any_preemption_is_a_storm_by_default() -> None:
    counter = iter([10.0, 10.0, 10.0, 11.0])
    probes = OpenAIBoundaryProbes(
        "http://scripted", "m", transport=scripted_server({}), preemptions=lambda: next(counter)
    )
    probe = probes.batch_probe("hi", 1)
    calm = probe(4)  # no preemption
    assert calm.outcome is Outcome.OK and "0 preemptions" in calm.detail
    storm = probe(4)  # one preemption: the KV cache could not hold the batch
    assert storm.outcome is Outcome.PREEMPTION_STORM and "1 preemption;" in storm.detail + ";"
    assert probes.requests_sent == 8


def test_storm_threshold_is_configurable() -> None:
    counter = iter([10.0, 14.0, 14.0, 15.0])
    probes = OpenAIBoundaryProbes(
        "http://scripted",
        "m",
        transport=scripted_server({}),
        preemptions=lambda: next(counter),
        storm_threshold=4,
    )
    probe = probes.batch_probe("hi", 1)
    storm = probe(4)  # 4 preemptions reach the threshold
    assert storm.outcome is Outcome.PREEMPTION_STORM and "4 preemptions" in storm.detail
    calm = probe(4)  # 1 preemption stays under it
    assert calm.outcome is Outcome.OK


def test_progress_gets_a_line_per_probe() -> None:
    lines: list[str] = []
    result = search_boundary(
        "batch", threshold_probe(5), start=1, max_value=64, progress=lines.append
    )
    assert len(lines) == result.probe_count
    assert lines[0] == "batch: probe 1 at 1: ok"
    assert lines[-1].startswith(f"batch: probe {result.probe_count} at ")


MISBEHAVING = '''
import json, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pytest_gpuinfer.memory.boundary import GRACEFUL, Outcome, class_verdict, search_boundary
from pytest_gpuinfer.memory.http_probes import OpenAIBoundaryProbes

MODE = "{mode}"
LIMIT = 40


class Handler(BaseHTTPRequestHandler):
    """A misbehaving server: past LIMIT words a clean 400, a 500, or no answer (a hang)."""

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200 if self.path == "/health" else 404, {{}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if len(body["prompt"].split()) <= LIMIT:
            self._send(200, {{"choices": [{{"text": "ok", "finish_reason": "length"}}]}})
        elif MODE == "4xx":
            self._send(400, {{"error": {{"message": "prompt is longer than the context"}}}})
        elif MODE == "5xx":
            self._send(500, {{"error": {{"message": "CUDA error: an illegal memory access"}}}})
        else:
            time.sleep(3)


@pytest.fixture
def url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{{server.server_address[1]}}"
    server.shutdown()


@pytest.mark.parametrize("expected", ["context", "graceful"])
def test_prompt_boundary(url, gpuinfer_verdicts, expected):
    probes = OpenAIBoundaryProbes(url, "m", timeout_s=1.0)
    result = search_boundary(
        "prompt tokens",
        probes.prompt_length_probe(lambda n: "w " * n),
        start=8,
        max_value=128,
        canary=probes.canary,
    )
    classes = {{Outcome.CLIENT_ERROR}} if expected == "context" else GRACEFUL
    gpuinfer_verdicts.check([class_verdict(result, classes)], result.describe())
'''


@pytest.mark.parametrize(
    ("mode", "seen"),
    [("5xx", "5xx (1/1 requests failed; HTTP 500: CUDA error*"), ("hang", "timeout (*")],
)
def test_a_boundary_that_is_a_5xx_or_a_hang_fails_its_class_naming_the_value(
    pytester: pytest.Pytester, mode: str, seen: str
) -> None:
    """Past 40 words the server answers 500 or hangs: both searches (a context limit, a
    graceful limit) fail, naming the first failing value (41) and what it did."""
    pytester.makepyfile(MISBEHAVING.format(mode=mode))
    # in a subprocess: in-process runs re-import httpcore's modules, and httpx then misses
    # their timeout exceptions
    result = pytester.runpytest_subprocess("--engine=sim")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [f"*FAIL  prompt tokens failure class: expected * past the boundary, got 41: {seen}"]
    )


def test_a_clean_refusal_at_the_boundary_passes_its_class(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(MISBEHAVING.format(mode="4xx"))
    pytester.runpytest("--engine=sim").assert_outcomes(passed=2)


def test_a_search_that_never_failed_has_no_class_to_judge() -> None:
    result = search_boundary("batch size", threshold_probe(1000), start=1, max_value=64)
    verdict = class_verdict(result, GRACEFUL)
    assert verdict.label == "NOT JUDGED (no data)"
    assert verdict.message.startswith("no batch size up to 64 failed")
