"""Model: config and architecture, tokenizer round trips on hard text, sha256 file manifests."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from pytest_gpuinfer.compat.probe import ServerProbe
from pytest_gpuinfer.compat.tokens import first_difference
from pytest_gpuinfer.models import builtin
from pytest_gpuinfer.models import manifest as model_manifest
from pytest_gpuinfer.models.tinymodel import file_digests
from pytest_gpuinfer.plugin.extras import require
from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of
from pytest_gpuinfer.targets import InferenceServer

HARD_TEXTS: dict[str, str] = {
    "empty": "",
    "ascii": "The quick brown fox jumps over the lazy dog.",
    "accents": "café naïve Zürich façade señor Ærøskøbing",
    "emoji": "ok 🙂🚀 family 👩‍👩‍👧‍👦 flag 🇯🇵 skin 👍🏽",
    "cjk": "東京都 北京市 한국어 日本語のテキスト 中文\uff0c标点\u3002",
    "combining": "e\u0301 a\u0308\u0304 Z\u0351\u0364\u036b n\u0303 \u0915\u094d\u0937",
    "whitespace": "a" + " " * 64 + "\t\t\n\n\n" + " " * 17 + "b\r\n \u00a0\u2003 c   ",
    "rtl": "שלום עולם مرحبا بالعالم",
    "zero_width": "zero\u200bwidth\u200djoin\ufeffbom",
    "astral": (
        "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522 "
        "\U0001d7d9\U0001d7da\U0001d7db \U00013000"
    ),
    "code": 'def f(x):\n\treturn {"k": [1, 2, 3]}  # comment\n',
}


def test_model_config_loads(model_dir: Path) -> None:
    """config.json loads with transformers and names an architecture and a model type."""
    transformers = require("transformers")
    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    architectures = list(getattr(config, "architectures", None) or [])
    assert architectures, f"{model_dir}/config.json lists no architectures"
    assert getattr(config, "model_type", None), f"{model_dir}/config.json has no model_type"


def test_served_context_fits_the_model(model_dir: Path, inference_server: InferenceServer) -> None:
    """The context the server reports is at most the model's max_position_embeddings."""
    config = json.loads((model_dir / "config.json").read_text())
    limit = config.get("max_position_embeddings")
    if not isinstance(limit, int):
        pytest.skip(f"{model_dir}/config.json has no max_position_embeddings")
    if inference_server.max_model_len is None:
        pytest.skip("the server reports no context length")
    assert inference_server.max_model_len <= limit, (
        f"served context {inference_server.max_model_len} exceeds the model's "
        f"max_position_embeddings {limit}"
    )


def _registry_source_archs() -> set[str] | None:
    """Architectures in vLLM's model registry source, read without importing vLLM (fast path)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    registry = package / "model_executor" / "models" / "registry.py"
    try:
        tree = ast.parse(registry.read_text())
    except (OSError, SyntaxError):
        return None
    archs: set[str] = set()
    for node in tree.body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Dict):
            continue
        for key, value in zip(node.value.keys, node.value.values, strict=False):
            # Supported entries map to (module, class); retired/out-of-tree ones map to strings.
            if isinstance(key, ast.Constant) and isinstance(value, ast.Tuple):
                archs.add(str(key.value))
    return archs or None


def _registry_archs_by_import(timeout_s: float = 180.0) -> set[str]:
    """``ModelRegistry.get_supported_archs()`` in a subprocess (importing vLLM takes ~20 s)."""
    code = (
        "import json; from vllm.model_executor.models import ModelRegistry; "
        "print(json.dumps(sorted(ModelRegistry.get_supported_archs())))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"importing vLLM's ModelRegistry failed:\n{done.stderr[-2000:]}", pytrace=False)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_architecture_is_supported_by_engine(
    model_dir: Path, request: pytest.FixtureRequest, record_property: Any
) -> None:
    """The checkpoint's architecture is one vLLM's ModelRegistry lists."""
    engine = gpuinfer_settings_of(request.config).engine
    if engine != "vllm":
        pytest.skip(f"architecture lists are checked for vLLM only; the engine is {engine!r}")
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not importable in this Python, so its model registry cannot be read")
    config = json.loads((model_dir / "config.json").read_text())
    architectures = list(config.get("architectures") or [])
    assert architectures, f"{model_dir}/config.json lists no architectures"
    known = _registry_source_archs()
    source = "vLLM's model registry source"
    if known is None or not set(architectures) & known:
        known = _registry_archs_by_import()
        source = "ModelRegistry.get_supported_archs()"
    record_property("architecture_source", source)
    supported = [arch for arch in architectures if arch in known]
    assert supported, (
        f"none of {architectures} is among the {len(known)} architectures in {source} "
        "(vLLM may still serve it through its Transformers backend)"
    )


@pytest.mark.parametrize("name", list(HARD_TEXTS))
def test_local_tokenizer_round_trip(local_tokenizer: Any, name: str) -> None:
    """decode(encode(text)) == text with the model's own tokenizer (transformers)."""
    text = HARD_TEXTS[name]
    ids = local_tokenizer.encode(text, add_special_tokens=False)
    if text == "":
        assert ids == [], f"the empty string encodes to {ids}"
    decoded = local_tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    at = first_difference(decoded, text)
    assert decoded == text, (
        f"round trip changed the text at char {at}: {decoded[at : at + 12]!r} != "
        f"{text[at : at + 12]!r} (ids {ids[:20]}...)"
    )


@pytest.mark.parametrize("name", list(HARD_TEXTS))
def test_server_tokenize_round_trip(probe: ServerProbe, optional_tokenizer: Any, name: str) -> None:
    """The server's /tokenize then /detokenize give the text back (and match the local ids)."""
    probe.tokenize_route().require()
    probe.detokenize_route().require()
    text = HARD_TEXTS[name]
    dialect = probe.tokenize_dialect()
    # A route that always adds special tokens (llama-cpp-python's /extras/tokenize) is compared
    # with special tokens on both sides; detokenizing drops them again.
    special = dialect is not None and dialect.special_key is None
    ids = probe.tokenize(text, add_special_tokens=special)
    if text == "" and not special:
        assert ids == [], f"/tokenize turned the empty string into {ids}"
    if optional_tokenizer is not None:
        local = optional_tokenizer.encode(text, add_special_tokens=special)
        assert ids == local, f"/tokenize ids {ids[:20]} != local tokenizer ids {local[:20]}"
    decoded = probe.detokenize(ids)
    at = first_difference(decoded, text)
    assert decoded == text, (
        f"/detokenize changed the text at char {at}: {decoded[at : at + 12]!r} != "
        f"{text[at : at + 12]!r}"
    )


def test_server_tokenize_adds_special_tokens_like_completions(
    probe: ServerProbe, http_client: httpx.Client, inference_server: InferenceServer
) -> None:
    """/tokenize with special tokens counts what /v1/completions reports as prompt_tokens."""
    probe.tokenize_route().require()
    probe.completions().require()
    prompt = HARD_TEXTS["cjk"]
    ids = probe.tokenize(prompt, add_special_tokens=True)
    body = {"model": inference_server.model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    usage = http_client.post("/v1/completions", json=body).json()["usage"]
    assert usage["prompt_tokens"] == len(ids), (
        f"/v1/completions counted {usage['prompt_tokens']} prompt tokens, /tokenize {len(ids)}"
    )


def test_model_files_match_manifest(
    model_dir: Path, request: pytest.FixtureRequest, record_property: Any
) -> None:
    """The model files hash to their manifest: --model-manifest PATH, else one this machine
    recorded in pytest's cache on the first run (catches a checkpoint swapped between runs)."""
    settings = gpuinfer_settings_of(request.config)
    actual = model_manifest.file_digests(model_dir)
    assert actual, f"{model_dir} holds no files to hash"
    if settings.model_manifest:
        path = Path(settings.model_manifest).expanduser()
        origin = f"--model-manifest {path}"
    else:
        cache = getattr(request.config, "cache", None)
        if cache is None:
            pytest.skip(
                "no --model-manifest PATH and pytest's cache is disabled (-p no:cacheprovider)"
            )
        key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
        path = cache.mkdir("gpuinfer-model-manifests") / f"{key}.json"
        origin = f"the manifest recorded in pytest's cache at {path}"
        if not path.is_file():
            model_manifest.write_manifest(path, model_dir, actual)
            record_property("model_manifest_recorded", str(path))
            pytest.skip(
                f"first run for {model_dir}: nothing to compare with yet; recorded its manifest "
                f"at {path}, which the next run checks (or give --model-manifest PATH)"
            )
    if settings.write_model_manifest:
        model_manifest.write_manifest(path, model_dir, actual)
        record_property("model_manifest_written", str(path))
        return
    if not path.is_file():
        pytest.fail(
            f"{origin} does not exist; write it first with --write-model-manifest", pytrace=False
        )
    try:
        expected = model_manifest.read_manifest(path)
    except ValueError as exc:
        pytest.fail(f"{origin}: {exc}", pytrace=False)
    problems = model_manifest.compare_digests(expected, actual)
    record_property("model_manifest_verified", str(path))
    assert not problems, (
        f"model {model_dir} differs from {origin} (corrupted or swapped checkpoint? if the "
        "change is intended, rerun with --write-model-manifest):\n" + "\n".join(problems)
    )


def test_builtin_model_is_reproducible(model_dir: Path, tmp_path: Path) -> None:
    """The served built-in model is byte for byte what a fresh write of its spec gives."""
    known = builtin.by_directory(model_dir)
    if known is None:
        pytest.skip(f"{model_dir} is not a built-in model")
    fresh = file_digests(known.write_to(tmp_path / "fresh"))
    served = file_digests(model_dir)
    problems = model_manifest.compare_digests(fresh, served)
    assert not problems, (
        f"the built-in model at {model_dir} differs from a fresh write of the same spec "
        f"(not reproducible, or changed on disk): {problems}"
    )
