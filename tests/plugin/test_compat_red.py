"""Each new compat check, driven red by a server that deserves it, fails with the response.

pytester runs the shipped compat modules against fake_openai.py (an OpenAI-compatible stand-in
launched with ``--engine command``) told to misbehave; a well-behaved run of the same fake shows
that the failure comes from the misbehaviour, not from the fake.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

FAKE_OPENAI = Path(__file__).with_name("fake_openai.py")
COMPAT = Path(__file__).parents[1] / "compat"


@pytest.fixture(scope="module")
def llama_dir() -> Path:
    """The built-in Llama's files (found before pytester points HOME elsewhere)."""
    from pytest_gpuinfer.models import tinymodel

    return tinymodel.ensure_model()


@pytest.fixture
def run_compat(pytester: pytest.Pytester) -> Callable[..., pytest.RunResult]:
    """Run compat modules (with a -k selection) against fake_openai.py with the given flags."""

    def run(modules: list[str], select: str, *flags: str) -> pytest.RunResult:
        command = shlex.join([sys.executable, str(FAKE_OPENAI), "--port", "{port}", *flags])
        return pytester.runpytest_subprocess(
            *(str(COMPAT / module) for module in modules),
            "-k",
            select,
            "--engine",
            "command",
            "--server-command",
            command,
            "-rsxf",
            "-p",
            "no:cacheprovider",
            timeout=240,
        )

    return run


def test_tool_arguments_breaking_the_schema_fail_the_tool_checks(
    run_compat: Callable[..., pytest.RunResult],
) -> None:
    """Arguments {"city": "Berlin", "days": 9} break the enum schema: required and named fail."""
    result = run_compat(["test_tools.py"], "required or named", "--tool-args-break-schema")
    result.assert_outcomes(failed=2)
    output = result.stdout.str()
    failures = output.split("short test summary info")[0]
    assert failures.count("break the schema of") == 2, output
    assert "break the schema of get_forecast: 9 is not one of [1, 2, 3]" in output, output
    assert "response: " in output and '\\"Berlin\\"' in output, output


def test_well_formed_tool_calls_pass_the_same_checks(
    run_compat: Callable[..., pytest.RunResult],
) -> None:
    """The same checks pass against the fake when its calls follow the schema."""
    result = run_compat(["test_tools.py"], "required or named or malformed")
    result.assert_outcomes(passed=5)


def test_invalid_schema_answered_500_fails_the_schema_check(
    run_compat: Callable[..., pytest.RunResult],
) -> None:
    """An invalid JSON schema must be a 4xx; a 500 fails, showing the response."""
    result = run_compat(["test_structured_outputs.py"], "invalid_schema", "--invalid-schema-500")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "an invalid schema answered 500 instead of a 4xx" in output, output
    assert 'response: HTTP 500: {"error": {"message": "invalid JSON schema"' in output, output
    passing = run_compat(["test_structured_outputs.py"], "invalid_schema or json_schema")
    passing.assert_outcomes(passed=2)


def test_400_to_every_valid_request_fails_instead_of_skipping(
    run_compat: Callable[..., pytest.RunResult],
) -> None:
    """A server answering 400 to every valid completion is broken, not "not supported"."""
    result = run_compat(
        ["test_api_conformance.py", "test_tools.py", "test_structured_outputs.py"],
        "shape or deterministic or required or json_schema",
        "--reject-valid",
    )
    outcomes = result.parseoutcomes()
    output = result.stdout.str()
    # A check whose fixture requires completions fails at setup (reported as an error).
    red = outcomes.get("failed", 0) + outcomes.get("errors", 0)
    assert red >= 6 and not outcomes.get("passed") and not outcomes.get("skipped"), output
    assert "not supported by this target" not in output, output
    assert "the probe found it broken: POST /v1/completions answered 400: rejected" in output


def test_200_with_empty_choices_fails_instead_of_skipping(
    run_compat: Callable[..., pytest.RunResult],
) -> None:
    """A 200 without choices is a broken answer, not an absent feature."""
    result = run_compat(
        ["test_api_conformance.py", "test_tools.py"],
        "shape or required",
        "--empty-choices",
    )
    outcomes = result.parseoutcomes()
    output = result.stdout.str()
    red = outcomes.get("failed", 0) + outcomes.get("errors", 0)
    assert red >= 3 and not outcomes.get("passed") and not outcomes.get("skipped"), output
    assert "not supported by this target" not in output, output
    assert "answered 200 but without choices" in output, output


@pytest.mark.parametrize(
    ("flags", "outcome", "message"),
    [
        ((), "skipped", "NOT JUDGED: cold start: cold start"),
        (("--gpuinfer-require-judgement",), "failed", "judgement required"),
        (("--max-cold-start=0.001",), "failed", "exceeds --max-cold-start 0.001 s"),
        (("--max-cold-start=600",), "passed", "; limit 600 s"),
    ],
)
def test_cold_start_without_a_limit_reads_not_judged_never_pass(
    pytester: pytest.Pytester, flags: tuple[str, ...], outcome: str, message: str
) -> None:
    """Without --max-cold-start the figures are reported NOT JUDGED (a skip), never a pass."""
    command = shlex.join([sys.executable, str(FAKE_OPENAI), "--port", "{port}"])
    result = pytester.runpytest_subprocess(
        str(COMPAT / "test_cold_start.py"),
        "--engine",
        "command",
        "--server-command",
        command,
        "-rsf",
        "-p",
        "no:cacheprovider",
        *flags,
        timeout=120,
    )
    result.assert_outcomes(**{outcome: 1})
    assert message in result.stdout.str(), result.stdout.str()


def test_endpoint_usage_is_counted_with_the_model_files_when_given(
    pytester: pytest.Pytester, llama_dir: Path
) -> None:
    """On --endpoint with the model's files here, usage is checked against the model's own
    tokenizer (not skipped for want of /tokenize, not the server against itself): the fake's
    fixed prompt_tokens 5 disagrees with it and fails."""
    import socket
    import subprocess

    model_dir = llama_dir
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(FAKE_OPENAI), "--port", str(port), "--model", str(model_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        result = pytester.runpytest_subprocess(
            str(COMPAT / "test_api_conformance.py"),
            "-k",
            "completion_usage_matches_tokenizer and 7",
            f"--endpoint=http://127.0.0.1:{port}",
            f"--model={model_dir}",
            "-rsf",
            "-p",
            "no:cacheprovider",
            timeout=120,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "usage.prompt_tokens 5 != 18 counted by the local tokenizer (transformers)" in output


def test_n_choices_that_repeat_one_text_fail(run_compat: Callable[..., pytest.RunResult]) -> None:
    """n=3 at temperature 1 must give three different texts; three copies of one fail."""
    result = run_compat(["test_api_conformance.py"], "distinct_choices")
    result.assert_outcomes(failed=1)
    assert "returned the same text more than once" in result.stdout.str(), result.stdout.str()


def test_a_context_fill_that_stops_early_fails(
    run_compat: Callable[..., pytest.RunResult], llama_dir: Path
) -> None:
    """The context must really be filled: a server that stops after one token, even with
    ignore_eos, fails the fill check instead of passing it early."""
    result = run_compat(
        ["test_context_limits.py"], "exactly_filling", "--stop-early", "--tokenizer", str(llama_dir)
    )
    result.assert_outcomes(failed=1)
    assert "1 of 4 tokens generated in a context of 512" in result.stdout.str(), result.stdout.str()
