"""Fail fast on a server that accepts connections and never answers a completion (pytester)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from pytest_gpuinfer.plugin.fail_fast import looks_like_timeout

THREE_CHECKS = """
def test_first(inference_server, http_client):
    http_client.post("/v1/completions", json={"model": inference_server.model, "prompt": "a"})

def test_second(inference_server, http_client):
    http_client.post("/v1/completions", json={"model": inference_server.model, "prompt": "b"})

def test_third(inference_server, openai_client):
    openai_client.completions.create(model=inference_server.model, prompt="c")

def test_without_server():
    pass
"""


def test_hung_server_decided_by_first_timeout(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str]
) -> None:
    pytester.makepyfile(THREE_CHECKS)
    command = fake_server_command("--hang-posts")
    started = time.monotonic()
    result = pytester.runpytest(
        "--engine=command", f"--server-command={command}", "--first-token-timeout=2"
    )
    elapsed = time.monotonic() - started
    result.assert_outcomes(failed=1, errors=2, passed=1)
    out = result.stdout.str()
    # The first check waits one first-token timeout, the probe one more; the rest are at once.
    assert elapsed < 2 * 2 + 8, f"took {elapsed:.1f} s against a hung server"
    assert "is unresponsive: it accepts connections but did not answer" in out
    probe = 'Probe: POST /v1/completions {"model": "fake-model", "prompt": "Hi", "max_tokens": 1'
    assert probe in out
    result.stdout.fnmatch_lines(["*waited * s; seen: no response (not even a status line)*"])
    assert "Decided by test_hung_server_decided_by_first_timeout.py::test_first" in out
    # The later tests say it in one line, naming the test that decided.
    assert out.count("judged after test_hung_server_decided_by_first_timeout.py::test_first") >= 2
    assert "ReadTimeout" in out, "the first test's own timeout should still be shown"


def test_healthy_server_after_a_timeout_is_not_judged(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str]
) -> None:
    pytester.makepyfile(
        """
        import httpx

        def test_times_out_on_its_own(inference_server):
            raise httpx.ReadTimeout("a slow request of this test's own")

        def test_next(inference_server, http_client):
            body = {"model": inference_server.model, "prompt": "a"}
            assert http_client.post("/v1/completions", json=body).status_code == 200
        """
    )
    result = pytester.runpytest(
        "--engine=command", f"--server-command={fake_server_command()}", "--first-token-timeout=2"
    )
    result.assert_outcomes(failed=1, passed=1)
    assert "unresponsive" not in result.stdout.str()


def test_timeouts_are_recognised_by_type_message_or_cause() -> None:
    import httpx

    try:
        try:
            raise httpx.ReadTimeout("read")
        except httpx.ReadTimeout:
            raise AssertionError("the check failed") from None
    except AssertionError as wrapped:
        assert looks_like_timeout(wrapped)  # through __context__
    assert looks_like_timeout(TimeoutError())
    assert looks_like_timeout(RuntimeError("no generated text within the first-token timeout"))
    assert not looks_like_timeout(AssertionError("finish_reason 'stop' but expected 'length'"))
