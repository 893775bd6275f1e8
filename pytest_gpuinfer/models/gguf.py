"""The built-in model as a GGUF file for llama.cpp, converted by llama.cpp's own converter.

The conversion runs the ``convert_hf_to_gguf.py`` that ships in llama-cpp-python's source
distribution (kept by ``scripts/setup.d/20-llamacpp.sh`` under ``.gpuinfer/llamacpp``), with the
gguf-py it vendors. That converter names a BPE tokenizer's pre-tokenizer by hashing how it splits
a fixed text and refuses hashes it has not seen (adding one needs the hub). The built-in
tokenizer is byte-level BPE with the GPT-2 regex and no normalizer, which is exactly llama.cpp's
``gpt-2`` pre-tokenizer, so for a tokenizer.json of that shape (checked here, not assumed) the
unknown hash is answered with ``gpt-2``; any other tokenizer still gets the converter's refusal.

The GGUF is cached next to the model directory (``<model dir>.gguf``) with a sidecar recording
the model's manifest digest and the converter used; a changed model or converter rewrites it.
The converter writes no timestamps, so the same model and converter give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_gpuinfer.models import tinymodel

SOURCE_ENV = "GPUINFER_LLAMACPP_SOURCE"
"""llama.cpp's source directory (with convert_hf_to_gguf.py), or the llama-cpp-python sdist."""

PROJECT_SOURCE_DIR = Path(".gpuinfer") / "llamacpp"
"""Where scripts/setup.d/20-llamacpp.sh unpacks the llama-cpp-python sdist (under the project)."""

CONVERT_TIMEOUT_S = 300.0

_BOOTSTRAP = r"""
import json, runpy, sys
from pathlib import Path
source, gpt2_shaped = Path(sys.argv[1]), sys.argv[2] == "1"
sys.path.insert(0, str(source))
sys.path.insert(1, str(source / "gguf-py"))
from conversion import base
original = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        if not gpt2_shaped:
            raise
        print("gpuinfer: unknown pre-tokenizer hash; tokenizer.json is byte-level BPE with the "
              "GPT-2 regex, so tokenizer.ggml.pre = gpt-2", file=sys.stderr)
        return "gpt-2"
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [str(source / "convert_hf_to_gguf.py"), *sys.argv[3:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
"""Runs the vendored converter with the one answer it cannot get offline (see the module doc)."""


class ConversionError(RuntimeError):
    """The GGUF could not be written; the message says why and what to do."""


def gguf_path(model_dir: Path) -> Path:
    """Where the GGUF of ``model_dir`` is cached: beside it, named after it."""
    return model_dir.parent / f"{model_dir.name}.gguf"


def checkpoint_dir(model: str) -> tuple[Path | None, str]:
    """The checkpoint directory behind ``--model`` (or beside its GGUF), else None and why."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path, ""
    if path.is_file() and path.suffix == ".gguf":
        source = path.with_suffix("")
        if source.is_dir() and gguf_path(source) == path:
            return source, ""
        return None, (
            f"model {model!r} is a local GGUF file with no Hugging Face checkpoint beside it "
            f"(no {source.name}/ directory): the model-file checks read config.json and the "
            "tokenizer files of a checkpoint directory"
        )
    if path.exists():
        return None, f"model {model!r} is a local file, not a checkpoint directory"
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        return None, f"model {model!r} does not exist on this machine"
    return None, f"model {model!r} is a hub id, not a local directory"


def is_gpt2_byte_level(model_dir: Path) -> bool:
    """True when tokenizer.json is BPE, byte-level with the GPT-2 regex, and has no normalizer."""
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return False
    pre = data.get("pre_tokenizer") or {}
    model = data.get("model") or {}
    return (
        model.get("type") == "BPE"
        and data.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) is True
        and pre.get("add_prefix_space") is False
    )


def converter_dir(source: Path) -> Path | None:
    """The llama.cpp directory holding convert_hf_to_gguf.py under ``source``, or None."""
    for candidate in (source, source / "vendor" / "llama.cpp"):
        if (candidate / "convert_hf_to_gguf.py").is_file() and (candidate / "gguf-py").is_dir():
            return candidate
    return None


def find_source(explicit: Path | None = None) -> Path:
    """llama.cpp's sources: ``explicit``, $GPUINFER_LLAMACPP_SOURCE, else the setup copy."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(explicit)
    elif os.environ.get(SOURCE_ENV):
        candidates.append(Path(os.environ[SOURCE_ENV]))
    else:
        project = Path(__file__).resolve().parents[2]
        for root in dict.fromkeys((Path.cwd(), project)):
            candidates += sorted(
                (root / PROJECT_SOURCE_DIR).glob("llama_cpp_python-*"), reverse=True
            )
    for candidate in candidates:
        found = converter_dir(candidate)
        if found is not None:
            return found
    looked = ", ".join(str(c) for c in candidates) or f"{PROJECT_SOURCE_DIR}/llama_cpp_python-*"
    raise ConversionError(
        "llama.cpp's convert_hf_to_gguf.py was not found (looked in: "
        f"{looked}); run `bash scripts/setup.d/20-llamacpp.sh`, or point {SOURCE_ENV} at "
        "llama.cpp's sources (the llama-cpp-python sdist's vendor/llama.cpp)"
    )


def _converter_digest(source: Path) -> str:
    """A short hash of the converter's code (the script and its conversion package)."""
    digest = hashlib.sha256()
    files = [source / "convert_hf_to_gguf.py", *sorted((source / "conversion").glob("*.py"))]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _model_digest(model_dir: Path) -> str:
    """A short hash of the model directory's files."""
    blob = json.dumps(tinymodel.file_digests(model_dir), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def convert(model_dir: Path, out: Path, *, source: Path, python: str = sys.executable) -> Path:
    """Write ``out`` from the Hugging Face checkpoint ``model_dir`` with the vendored converter."""
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    argv = [
        python,
        "-c",
        _BOOTSTRAP,
        str(source),
        "1" if is_gpt2_byte_level(model_dir) else "0",
        str(model_dir),
        "--outfile",
        str(staging),
        "--outtype",
        "f32",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        staging.unlink(missing_ok=True)
        raise ConversionError(
            f"convert_hf_to_gguf.py did not finish within {CONVERT_TIMEOUT_S:.0f} s"
        ) from None
    if done.returncode != 0 or not staging.is_file():
        staging.unlink(missing_ok=True)
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-25:])
        raise ConversionError(
            f"converting {model_dir} to GGUF with {source}/convert_hf_to_gguf.py failed "
            f"(exit {done.returncode}):\n{tail}"
        )
    os.replace(staging, out)
    return out


def ensure_gguf(model_dir: Path | None = None, *, source: Path | None = None) -> Path:
    """The cached GGUF of ``model_dir`` (default: the built-in model), converting it if needed."""
    model_dir = model_dir or tinymodel.ensure_model()
    out = gguf_path(model_dir)
    sidecar = out.with_name(out.name + ".json")
    try:
        recorded = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        recorded = None
    model_digest = _model_digest(model_dir)
    if out.is_file() and recorded and recorded.get("model") == model_digest and source is None:
        return out
    converter = find_source(source)
    wanted = {"model": model_digest, "converter": _converter_digest(converter)}
    if out.is_file() and recorded == wanted:
        return out
    convert(model_dir, out, source=converter)
    wanted["gguf_sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: convert (or find) the built-in model's GGUF and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_gpuinfer.models.gguf",
        description="Convert the built-in model to GGUF with llama.cpp's convert_hf_to_gguf.py.",
    )
    parser.add_argument("--model-dir", type=Path, help="a Hugging Face checkpoint directory")
    parser.add_argument(
        "--llamacpp-source", type=Path, help=f"llama.cpp's sources (default: ${SOURCE_ENV})"
    )
    args = parser.parse_args(argv)
    try:
        path = ensure_gguf(args.model_dir, source=args.llamacpp_source)
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
