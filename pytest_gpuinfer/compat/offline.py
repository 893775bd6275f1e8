"""Engine subprocesses next to the running server (the offline ``vllm.LLM``, ``run_batch``).

They must repeat the server's model-affecting flags to compute the same thing, and run in a
process group of their own that is gone when they return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ENGINE_FLAGS: dict[str, tuple[str, bool]] = {
    "--dtype": ("dtype", True),
    "--quantization": ("quantization", True),
    "--tokenizer": ("tokenizer", True),
    "--kv-cache-dtype": ("kv_cache_dtype", True),
    "--trust-remote-code": ("trust_remote_code", False),
    "--enforce-eager": ("enforce_eager", False),
}
"""Server flags that change what the model computes; offline runs must repeat them."""


def model_flags(engine_args: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """The model-affecting flags among the server's engine args, as CLI args and LLM kwargs."""
    argv: list[str] = []
    kwargs: dict[str, Any] = {}
    args = list(engine_args)
    for i, arg in enumerate(args):
        flag, _, inline = arg.partition("=")
        if flag not in ENGINE_FLAGS:
            continue
        name, takes_value = ENGINE_FLAGS[flag]
        if not takes_value:
            argv.append(flag)
            kwargs[name] = True
            continue
        value = inline or (args[i + 1] if i + 1 < len(args) else "")
        argv += [flag, value]
        kwargs[name] = value
    return argv, kwargs


@dataclass
class SubprocessResult:
    """How an engine subprocess ended: exit code (None if killed at the timeout) and its log."""

    returncode: int | None
    seconds: float
    log: str


def run_engine_process(
    argv: Sequence[str], *, env: dict[str, str], log_path: Any, timeout_s: float
) -> SubprocessResult:
    """Run an engine command in its own process group; the whole group is gone on return."""
    import time

    from pytest_gpuinfer.targets.process import ManagedProcess, read_log_tail

    started = time.monotonic()
    process = ManagedProcess(argv, log_path=log_path, env=env)
    try:
        while process.returncode() is None and time.monotonic() - started < timeout_s:
            time.sleep(0.5)
        code = process.returncode()
    finally:
        process.stop(grace_s=10.0)
    return SubprocessResult(code, time.monotonic() - started, read_log_tail(log_path, 60))
