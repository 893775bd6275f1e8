"""``--engine llamacpp``: llama.cpp's server from PyPI ``llama-cpp-python[server]``, on a GGUF.

The built-in model is served as the GGUF that :mod:`pytest_gpuinfer.models.gguf` converts with
llama.cpp's own converter (``scripts/setup.d/20-llamacpp.sh`` installs the server and converts
it). ``--model`` takes a ``.gguf`` file. The context length is what this launch sets with
``--n_ctx`` (1024 for the built-in model, as for vLLM; llama-cpp-python's 2048 otherwise):
llama-cpp-python's ``/v1/models`` does not report it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_gpuinfer.models import builtin, gguf
from pytest_gpuinfer.targets.base import InferenceServer, LaunchContext, TargetError
from pytest_gpuinfer.targets.launcher import CommandLauncher, LaunchPlan, engine_env
from pytest_gpuinfer.targets.vllm import has_flag

DISTRIBUTION = "llama_cpp_python"
BUILTIN_CONTEXT = 1024
"""The built-in model's context length here, the same as vLLM's --max-model-len for it."""
SERVER_DEFAULT_CONTEXT = 2048
"""llama-cpp-python's own default --n_ctx."""


def local_version() -> str | None:
    """The installed llama-cpp-python version, or None when it is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag value`` or ``--flag=value``), or None."""
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
    return None


def model_file(ctx: LaunchContext) -> Path:
    """The GGUF to serve: the built-in model's (converted when needed) or ``--model``'s file."""
    known = builtin.resolve(ctx.model)
    if known is not None:
        try:
            return gguf.ensure_gguf(known.ensure())
        except gguf.ConversionError as exc:
            raise TargetError(f"--engine llamacpp: the built-in model has no GGUF: {exc}") from None
    path = Path(str(ctx.model)).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.resolve()
    if path.is_dir():
        raise TargetError(
            f"--engine llamacpp --model {ctx.model}: llama.cpp serves a .gguf file, and this is "
            "a directory; convert it with llama.cpp's convert_hf_to_gguf.py and pass the file"
        )
    raise TargetError(f"--engine llamacpp --model {ctx.model}: no such .gguf file")


def command(
    *,
    model: Path,
    host: str,
    port: int,
    alias: str,
    n_ctx: int | None,
    api_key: str | None,
    engine_args: Sequence[str],
    python: str = sys.executable,
) -> list[str]:
    """``python -m llama_cpp.server`` on ``model``; engine arguments override the defaults."""
    argv = [python, "-m", "llama_cpp.server", "--model", str(model)]
    argv += ["--host", host, "--port", str(port)]
    if not has_flag(engine_args, "--model_alias"):
        argv += ["--model_alias", alias]
    if n_ctx is not None and not has_flag(engine_args, "--n_ctx"):
        argv += ["--n_ctx", str(n_ctx)]
    if api_key and not has_flag(engine_args, "--api_key"):
        argv += ["--api_key", api_key]
    return argv + list(engine_args)


class LlamaCppLauncher(CommandLauncher):
    """llama.cpp's OpenAI-compatible server as packaged by llama-cpp-python."""

    name = "llamacpp"
    summary = "llama.cpp's server (PyPI llama-cpp-python[server]) on a GGUF model"

    def check(self, ctx: LaunchContext) -> str | None:
        """A --model that is not a .gguf file is a usage error caught before anything runs."""
        if builtin.resolve(ctx.model) is None and not str(ctx.model).endswith(".gguf"):
            return (
                f"--engine llamacpp serves GGUF files; --model {ctx.model} is not a .gguf "
                "(leave --model out to serve the built-in model converted to GGUF)"
            )
        return None

    def describe(self, ctx: LaunchContext) -> str:
        """Version, model and where it will listen."""
        version = local_version() or "NOT INSTALLED"
        known = builtin.resolve(ctx.model)
        model = f"built-in {known.served_name} (GGUF)" if known else ctx.model
        return f"llamacpp (llama-cpp-python {version}), model {model}, launched on first use"

    def plan(self, ctx: LaunchContext) -> LaunchPlan:
        """The server command on the GGUF, with the context length set explicitly."""
        version = local_version()
        if version is None or importlib.util.find_spec("llama_cpp") is None:
            raise TargetError(
                "--engine llamacpp: llama-cpp-python is not installed in this Python "
                f"({sys.executable}); run `bash scripts/setup.d/20-llamacpp.sh` (it builds "
                "llama-cpp-python[server] from source and converts the built-in model)"
            )
        path = model_file(ctx)
        known = builtin.resolve(ctx.model)
        served = known.served_name if known else path.stem
        argv = command(
            model=path,
            host=ctx.host,
            port=ctx.port,
            alias=flag_value(ctx.engine_args, "--model_alias") or served,
            n_ctx=BUILTIN_CONTEXT if known else None,
            api_key=ctx.api_key,
            engine_args=ctx.engine_args,
        )
        env = engine_env(ctx)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return LaunchPlan(argv, env, version, str(path), served)

    def launch(self, ctx: LaunchContext) -> InferenceServer:
        """Launch, then record the context length this launch set (the server does not say)."""
        server = super().launch(ctx)
        if server.max_model_len is None:
            n_ctx = flag_value(ctx.engine_args, "--n_ctx")
            default = BUILTIN_CONTEXT if builtin.resolve(ctx.model) else SERVER_DEFAULT_CONTEXT
            server.max_model_len = int(n_ctx) if n_ctx else default
        return server
