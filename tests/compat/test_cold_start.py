"""Cold start: launch to the first successful completion, reported and held to --max-cold-start
(NOT JUDGED, never a pass, without a limit).

conftest.py runs this module first, so the completion timed here is the server's first one.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat.findings import Finding, Outcome, error_message
from pytest_gpuinfer.plugin.compat_outcomes import judge
from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of
from pytest_gpuinfer.targets import InferenceServer

from .compat_helpers import COLD_START_KEY


def test_cold_start_to_first_completion(
    inference_server: InferenceServer,
    http_client: httpx.Client,
    request: pytest.FixtureRequest,
    record_property: Any,
) -> None:
    """Launch-to-ready plus the first completion is measured and within --max-cold-start."""
    if not inference_server.launched or inference_server.cold_start_s is None:
        pytest.skip(
            "the target was not launched by this run (--endpoint), so its cold start "
            "cannot be measured"
        )
    body = {
        "model": inference_server.model,
        "prompt": "Cold start",
        "max_tokens": 8,
        "temperature": 0.0,
    }
    started = time.monotonic()
    response = http_client.post("/v1/completions", json=body)
    first_completion_s = time.monotonic() - started
    assert response.status_code == 200, (
        f"the first completion after launch answered {response.status_code}: "
        f"{error_message(response)}"
    )
    assert response.json()["choices"], "the first completion returned no choices"
    ready_s = float(inference_server.cold_start_s)
    total_s = ready_s + first_completion_s
    figures = {"total_s": total_s, "ready_s": ready_s, "first_completion_s": first_completion_s}
    request.config.stash[COLD_START_KEY] = figures
    for name, value in figures.items():
        record_property(f"cold_start_{name}", round(value, 3))
    limit = gpuinfer_settings_of(request.config).max_cold_start_s
    measured = (
        f"cold start {total_s:.1f} s (ready {ready_s:.1f} s + first completion "
        f"{first_completion_s:.2f} s)"
    )
    if limit is None:
        judge(
            Finding(
                "cold start",
                Outcome.NOT_JUDGED,
                f"{measured} measured; no --max-cold-start (ini gpuinfer_max_cold_start) to "
                "judge it by",
            ),
            request.config,
        )
    assert total_s <= limit, f"{measured} exceeds --max-cold-start {limit:g} s"
