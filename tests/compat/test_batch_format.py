"""Offline batch format: the OpenAI batch JSONL round-trips through vLLM's run_batch.

Every input line must come back once with its custom_id; a failing line (an over-long prompt, an
unsupported URL) is reported as an error on that line, not lost. Runs in a subprocess with a
timeout; the process group is stopped afterwards.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuinfer.compat.offline import run_engine_process
from pytest_gpuinfer.targets import InferenceServer

from .engine_env import OFFLINE_TIMEOUT_S, offline_setup

MAX_TOKENS = 6
CONTEXT_MESSAGE = re.compile(r"context|max_model_len|maximum.{0,40}(length|tokens)", re.I)


def _line(custom_id: str, content: str, model: str, url: str = "/v1/chat/completions") -> str:
    """One batch input line: a chat completion request."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    }
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def test_run_batch_round_trips_every_line(
    launched_vllm: InferenceServer,
    model_dir: Path,
    prompt_builder: Callable[[int], str],
    max_context: int,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """run_batch answers each line once: good lines with completions, bad lines with errors."""
    inference_server = launched_vllm
    setup = offline_setup(inference_server, model_dir, request.config)
    model = inference_server.model
    too_long = prompt_builder(max_context - 1) * 2
    lines = {
        "good-0": _line("good-0", "Hello there", model),
        "good-1": _line("good-1", "東京 🙂 combining e\u0301", model),
        "good-2": _line("good-2", "Describe the queue.", model),
        "too-long": _line("too-long", too_long, model),
        "bad-url": _line("bad-url", "Hi", model, url="/v1/no-such-endpoint"),
    }
    bad = {"too-long", "bad-url"}
    source, target = tmp_path / "batch-in.jsonl", tmp_path / "batch-out.jsonl"
    source.write_text("\n".join(lines.values()) + "\n")
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        str(source),
        "-o",
        str(target),
        "--model",
        str(model_dir),
        "--served-model-name",
        model,
        "--max-model-len",
        str(max_context),
        *setup.cli_flags,
    ]
    done = run_engine_process(
        argv, env=setup.env, log_path=tmp_path / "run-batch.log", timeout_s=OFFLINE_TIMEOUT_S
    )
    record_property("run_batch_s", round(done.seconds, 1))
    if done.returncode is None:
        pytest.fail(
            f"run_batch did not finish within {OFFLINE_TIMEOUT_S:.0f} s; log tail:\n{done.log}",
            pytrace=False,
        )
    assert done.returncode == 0, f"run_batch exited with {done.returncode}; log tail:\n{done.log}"
    assert target.is_file(), f"run_batch wrote no output file; log tail:\n{done.log}"
    outputs = [json.loads(row) for row in target.read_text().splitlines() if row.strip()]
    ids = Counter(str(o.get("custom_id")) for o in outputs)
    assert ids == Counter(list(lines)), (
        f"output custom_ids {dict(ids)} do not match the input's {sorted(lines)} one to one"
    )
    for output in outputs:
        custom_id = output["custom_id"]
        response = output.get("response") or {}
        if custom_id in bad:
            _check_failed_line(custom_id, output)
            continue
        assert output.get("error") is None, f"{custom_id}: unexpected error {output['error']}"
        assert response.get("status_code") == 200, f"{custom_id}: response {response}"
        body = response.get("body") or {}
        choices = body.get("choices") or []
        assert len(choices) == 1, f"{custom_id}: {len(choices)} choices in {str(body)[:300]}"
        assert isinstance(choices[0]["message"]["content"], str), f"{custom_id}: {choices[0]}"
        used = body["usage"]["completion_tokens"]
        assert 1 <= used <= MAX_TOKENS, f"{custom_id}: completion_tokens {used}"


def _check_failed_line(custom_id: str, output: dict[str, Any]) -> None:
    """A bad line carries an error and a 4xx status; the over-long one names the context."""
    error = output.get("error")
    status = (output.get("response") or {}).get("status_code")
    assert error, f"{custom_id}: a failing line came back without an error: {output}"
    assert isinstance(status, int) and 400 <= status < 500, (
        f"{custom_id}: status {status} for a failing line (expected 4xx): {output}"
    )
    if custom_id == "too-long":
        text = json.dumps(error)
        assert CONTEXT_MESSAGE.search(text), (
            f"too-long: the error does not mention the context length: {text[:300]}"
        )
