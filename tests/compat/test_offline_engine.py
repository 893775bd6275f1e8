"""Offline engine: vllm.LLM loads the served model and generates the server's greedy tokens.

The engine runs in a subprocess (offline_llm_helper.py) with a timeout, so its worker processes
and memory never stay in pytest; the whole process group is stopped afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat.calls import post_ok
from pytest_gpuinfer.compat.offline import run_engine_process
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.targets import InferenceServer

from .engine_env import OFFLINE_TIMEOUT_S, offline_setup

HELPER = Path(__file__).with_name("offline_llm_helper.py")
PROMPTS = [
    "The server says",
    "Time to first token depends on",
    "東京 and 北京 are cities; 🙂",
    "a",
]
MAX_TOKENS = 12


def test_offline_llm_matches_server_greedy_tokens(
    launched_vllm: InferenceServer,
    model_dir: Path,
    http_client: httpx.Client,
    probe: ServerProbe,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """vllm.LLM with the server's settings returns the same token ids at temperature 0."""
    inference_server = launched_vllm
    setup = offline_setup(inference_server, model_dir, request.config)
    assert inference_server.max_model_len, "the server reported no max_model_len"
    with_ids = probe.return_token_ids().available
    served: list[dict[str, Any]] = []
    for prompt in PROMPTS:
        body = {
            "model": inference_server.model,
            "prompt": prompt,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            **({"return_token_ids": True} if with_ids else {}),
        }
        served.append(post_ok(http_client, "/v1/completions", body)["choices"][0])
    job = {
        "model": str(model_dir),
        "prompts": PROMPTS,
        "max_tokens": MAX_TOKENS,
        "max_model_len": inference_server.max_model_len,
        "engine_kwargs": setup.llm_kwargs,
    }
    job_path, result_path = tmp_path / "job.json", tmp_path / "result.json"
    job_path.write_text(json.dumps(job))
    done = run_engine_process(
        [sys.executable, str(HELPER), str(job_path), str(result_path)],
        env=setup.env,
        log_path=tmp_path / "offline-llm.log",
        timeout_s=OFFLINE_TIMEOUT_S,
    )
    record_property("offline_llm_s", round(done.seconds, 1))
    if done.returncode is None:
        pytest.fail(
            f"vllm.LLM did not finish within {OFFLINE_TIMEOUT_S:.0f} s; log tail:\n{done.log}",
            pytrace=False,
        )
    assert done.returncode == 0 and result_path.is_file(), (
        f"vllm.LLM exited with {done.returncode}; log tail:\n{done.log}"
    )
    result = json.loads(result_path.read_text())
    record_property("offline_llm_load_s", round(result["load_s"], 1))
    assert result["max_model_len"] == inference_server.max_model_len, (
        f"offline max_model_len {result['max_model_len']} != server "
        f"{inference_server.max_model_len}"
    )
    if setup.server_dtype is not None:
        assert result["dtype"] == setup.server_dtype, (
            f"offline dtype {result['dtype']} != server dtype {setup.server_dtype}"
        )
    mismatches = []
    for i, (prompt, choice) in enumerate(zip(PROMPTS, served, strict=True)):
        if with_ids:
            ours, theirs = result["token_ids"][i], choice["token_ids"]
        else:
            ours, theirs = result["texts"][i], choice["text"]
        if ours != theirs:
            at = next(
                (j for j, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                min(len(ours), len(theirs)),
            )
            mismatches.append(
                f"prompt {prompt!r}: offline {ours!r} != server {theirs!r} "
                f"(first difference at position {at})"
            )
    what = "token ids" if with_ids else "texts (the server has no return_token_ids)"
    assert not mismatches, f"offline vs server {what} differ:\n" + "\n".join(mismatches)
