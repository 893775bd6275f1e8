"""LoRA adapters: listed, applied (outputs differ from the base, stably), loaded and unloaded at
runtime, and a broken adapter refused with a clear error.

vLLM lists each adapter in ``/v1/models`` with ``parent`` set to the base model and serves it
under its own model name. Runtime loading (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``)
exists only when the server allows it (vLLM: ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``); the
routes are then in ``/openapi.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_gpuinfer.compat import calls
from pytest_gpuinfer.compat.findings import (
    Feature,
    Finding,
    describe_response,
    error_message,
    json_or_none,
)
from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.compat.target import CompatTarget

COMPLETIONS = "/v1/completions"
LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
PROMPTS = ["The inference server streams tokens back to", "Health checks and metrics"]
MAX_TOKENS = 12


def listed(server: ServerProbe) -> list[str]:
    """Names of the adapters ``/v1/models`` lists on the served base model."""
    response = server.client.get("/v1/models")
    body = json_or_none(response) if response.status_code == 200 else None
    entries = body.get("data") if isinstance(body, dict) else None
    return [
        str(entry["id"])
        for entry in entries or []
        if isinstance(entry, dict) and entry.get("parent") == server.model and entry.get("id")
    ]


def probe(server: ServerProbe) -> Feature:
    """The server lists at least one LoRA adapter on the served model."""

    def run() -> Feature:
        names = listed(server)
        if names:
            return Feature("LoRA adapters", True, f"/v1/models lists {names}")
        return Feature(
            "LoRA adapters",
            False,
            f"/v1/models lists no adapter whose parent is {server.model!r} (vLLM: serve with "
            "--enable-lora --lora-modules NAME=PATH)",
        )

    return server.cached("LoRA adapters", run)


def runtime_probe(server: ServerProbe) -> Feature:
    """The server takes adapters at runtime (its OpenAPI document lists the load route)."""

    def run() -> Feature:
        response = server.client.get("/openapi.json")
        paths = (json_or_none(response) or {}).get("paths") if response.status_code == 200 else None
        if isinstance(paths, dict) and LOAD in paths and UNLOAD in paths:
            return Feature("runtime LoRA loading", True, f"/openapi.json lists {LOAD}")
        if isinstance(paths, dict):
            return Feature(
                "runtime LoRA loading",
                False,
                f"/openapi.json has no {LOAD} (vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)",
            )
        return Feature(
            "runtime LoRA loading",
            False,
            f"no /openapi.json to tell (GET answered {response.status_code})",
        )

    return server.cached("runtime LoRA loading", run)


def complete(target: CompatTarget, model: str, prompt: str) -> str:
    """The greedy completion of ``prompt`` by ``model`` (an adapter name or the base)."""
    body = calls.post_ok(
        target.client,
        COMPLETIONS,
        {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0},
    )
    return str(calls.choices_of(body, COMPLETIONS)[0].get("text"))


def adapter_listed(target: CompatTarget, expected: str | None) -> Finding:
    """The adapter the server was started with is in ``/v1/models`` with the base as parent."""
    check = "lora:listed"
    names = listed(target.probe)
    if expected is not None and expected not in names:
        return Finding.failed(check, f"{expected!r} is not listed on {target.model!r}: {names}")
    if not names:
        return Finding.failed(check, f"no adapter on {target.model!r}")
    return Finding.passed(check, f"{names}")


def differs_and_stable(target: CompatTarget, adapter: str) -> Finding:
    """Greedy outputs through the adapter differ from the base model's and repeat exactly."""
    check = "lora:applied"
    base = [complete(target, target.model, p) for p in PROMPTS]
    first = [complete(target, adapter, p) for p in PROMPTS]
    again = [complete(target, adapter, p) for p in PROMPTS]
    if first != again:
        return Finding.failed(
            check, f"{adapter} is not stable at temperature 0: {first} then {again}"
        )
    if first == base:
        return Finding.failed(
            check,
            f"{adapter} gives exactly the base model's outputs {base}: the adapter was not applied",
        )
    return Finding.passed(
        check,
        f"{adapter} differs from the base on "
        f"{sum(a != b for a, b in zip(first, base, strict=True))} of {len(PROMPTS)}",
    )


def runtime_load_unload(target: CompatTarget, adapter_dir: Path, reference: str | None) -> Finding:
    """An adapter loaded at runtime is listed and applied (equal to ``reference``, the same files
    served from the start, when given); after unloading it is gone (404 on use)."""
    check = "lora:runtime load"
    name = f"gpuinfer-runtime-{os.getpid()}"
    response = calls.post(target.client, LOAD, {"lora_name": name, "lora_path": str(adapter_dir)})
    if response.status_code != 200:
        return Finding.failed(
            check,
            f"loading {adapter_dir} answered {response.status_code}",
            describe_response(response),
        )
    try:
        if name not in listed(target.probe):
            return Finding.failed(check, f"{name} loaded but not listed in /v1/models")
        loaded = [complete(target, name, p) for p in PROMPTS]
        if reference is not None:
            expected = [complete(target, reference, p) for p in PROMPTS]
            if loaded != expected:
                return Finding.failed(
                    check, f"runtime-loaded {loaded} != {reference} {expected} (same adapter files)"
                )
    finally:
        unloaded = calls.post(target.client, UNLOAD, {"lora_name": name})
    if unloaded.status_code != 200:
        return Finding.failed(
            check, f"unloading answered {unloaded.status_code}", describe_response(unloaded)
        )
    after = calls.post(
        target.client, COMPLETIONS, {"model": name, "prompt": PROMPTS[0], "max_tokens": 2}
    )
    if after.status_code != 404:
        return Finding.failed(
            check,
            f"after unloading, {name} answered {after.status_code} instead of 404",
            describe_response(after),
        )
    return Finding.passed(check, f"loaded, applied, unloaded {name}")


def broken_refused(target: CompatTarget, adapter_dir: Path, case: str) -> tuple[Finding, Any]:
    """A broken adapter is refused with a 4xx naming the problem, is not listed, and the server
    lives on. Returns the finding and the response (the evidence for the deviation table)."""
    check = f"lora:broken adapter ({case})"
    name = f"gpuinfer-broken-{os.getpid()}"
    response = calls.post(target.client, LOAD, {"lora_name": name, "lora_path": str(adapter_dir)})
    healthy = calls.health_after(target.client, f"loading a broken adapter ({case})")
    if not healthy.ok:
        return healthy, response
    if name in listed(target.probe):
        calls.post(target.client, UNLOAD, {"lora_name": name})
        return Finding.failed(
            check,
            f"the broken adapter was loaded and listed as {name}",
            describe_response(response),
        ), response
    if not 400 <= response.status_code < 500:
        return Finding.failed(
            check, f"answered {response.status_code} instead of a 4xx", describe_response(response)
        ), response
    if not error_message(response):
        return Finding.failed(
            check, "the 4xx carries no message", describe_response(response)
        ), response
    return Finding.passed(check, f"{response.status_code}: {error_message(response)}"), response
