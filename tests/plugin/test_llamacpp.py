"""--engine llamacpp: its command line, its model handling, and the GGUF conversion's guards."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_gpuinfer.models import gguf, tinymodel
from pytest_gpuinfer.targets import llamacpp
from pytest_gpuinfer.targets.base import LaunchContext, TargetError


def context(tmp_path: Path, **overrides: object) -> LaunchContext:
    """A launch context on a fixed port."""
    return LaunchContext(engine="llamacpp", port=8123, work_dir=tmp_path, **overrides)  # type: ignore[arg-type]


def test_command_sets_alias_context_and_key_unless_engine_args_do() -> None:
    """The defaults are explicit on the command line, and --engine-arg overrides each one."""
    argv = llamacpp.command(
        model=Path("/m/x.gguf"),
        host="127.0.0.1",
        port=9,
        alias="tiny",
        n_ctx=1024,
        api_key="k",
        engine_args=[],
        python="py",
    )
    assert argv[:3] == ["py", "-m", "llama_cpp.server"]
    joined = " ".join(argv)
    for part in (
        "--model /m/x.gguf",
        "--port 9",
        "--model_alias tiny",
        "--n_ctx 1024",
        "--api_key k",
    ):
        assert part in joined, joined
    again = llamacpp.command(
        model=Path("/m/x.gguf"),
        host="127.0.0.1",
        port=9,
        alias="tiny",
        n_ctx=1024,
        api_key=None,
        engine_args=["--n_ctx=512", "--model_alias", "other"],
        python="py",
    )
    assert again.count("--n_ctx=512") == 1 and "1024" not in again
    assert again.count("--model_alias") == 1 and again[-1] == "other"


def test_flag_value_reads_both_forms() -> None:
    """--flag value and --flag=value both give the value."""
    assert llamacpp.flag_value(["--n_ctx", "256"], "--n_ctx") == "256"
    assert llamacpp.flag_value(["--n_ctx=128"], "--n_ctx") == "128"
    assert llamacpp.flag_value(["--n_ctx_x=1"], "--n_ctx") is None


def test_non_gguf_model_is_a_usage_error(tmp_path: Path) -> None:
    """--model pointing at a checkpoint directory is refused before anything is launched."""
    problem = llamacpp.LlamaCppLauncher().check(context(tmp_path, model=str(tmp_path)))
    assert problem is not None and "GGUF" in problem
    assert llamacpp.LlamaCppLauncher().check(context(tmp_path, model="/x/m.gguf")) is None


def test_missing_gguf_file_names_the_path(tmp_path: Path) -> None:
    """A .gguf path that does not exist is a TargetError naming it."""
    missing = tmp_path / "nope.gguf"
    with pytest.raises(TargetError, match=r"no such \.gguf file"):
        llamacpp.model_file(context(tmp_path, model=str(missing)))


def test_local_gguf_is_not_called_a_hub_id(tmp_path: Path) -> None:
    """A GGUF on disk is described as a local file, never as "a hub id" (the old message)."""
    lone = tmp_path / "model.gguf"
    lone.write_bytes(b"GGUF")
    path, reason = gguf.checkpoint_dir(str(lone))
    assert path is None
    assert "local GGUF file" in reason and "hub id" not in reason
    assert "hub id" in gguf.checkpoint_dir("org/model")[1]
    assert "does not exist" in gguf.checkpoint_dir(str(tmp_path / "gone" / "m.gguf"))[1]


def test_gguf_beside_its_checkpoint_maps_back_to_it(tmp_path: Path) -> None:
    """The cached GGUF of a checkpoint leads the model-file checks back to the checkpoint."""
    source = tmp_path / "tiny-abc"
    source.mkdir()
    converted = gguf.gguf_path(source)
    converted.write_bytes(b"GGUF")
    assert converted == tmp_path / "tiny-abc.gguf"
    assert gguf.checkpoint_dir(str(converted)) == (source, "")


def test_builtin_tokenizer_is_gpt2_byte_level_and_others_are_not(tmp_path: Path) -> None:
    """The gpt-2 answer is given only for a tokenizer.json of exactly that shape."""
    model_dir = tinymodel.ensure_model()
    assert gguf.is_gpt2_byte_level(model_dir)
    other = tmp_path / "other"
    other.mkdir()
    data = json.loads((model_dir / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "NFC"}
    (other / "tokenizer.json").write_text(json.dumps(data))
    assert not gguf.is_gpt2_byte_level(other)
    (other / "tokenizer.json").write_text("{}")
    assert not gguf.is_gpt2_byte_level(other)


def test_missing_converter_says_how_to_get_it(tmp_path: Path) -> None:
    """Without llama.cpp's sources the error names the setup script and the variable."""
    with pytest.raises(gguf.ConversionError, match=r"20-llamacpp\.sh.*GPUINFER_LLAMACPP_SOURCE"):
        gguf.find_source(tmp_path)


def test_builtin_gguf_converts_reproducibly(tmp_path: Path) -> None:
    """A fresh conversion of the built-in model gives the bytes of the cached GGUF."""
    try:
        source = gguf.find_source()
    except gguf.ConversionError as exc:
        pytest.skip(f"llama.cpp's converter is not here: {exc}")
    pytest.importorskip("torch", reason="convert_hf_to_gguf.py imports torch")
    cached = gguf.ensure_gguf(source=source)
    model_dir = tmp_path / tinymodel.ensure_model().name
    shutil.copytree(tinymodel.ensure_model(), model_dir)
    fresh = gguf.convert(model_dir, tmp_path / "fresh.gguf", source=source)
    assert fresh.read_bytes()[:4] == b"GGUF"
    assert fresh.read_bytes() == cached.read_bytes(), "the same model converted differently"


def test_vllm_only_checks_skip_for_the_engine_not_the_model_file(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str], tmp_path: Path
) -> None:
    """On another engine with a .gguf, the offline-engine and batch checks name the engine."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    compat = Path(__file__).parents[1] / "compat"
    result = pytester.runpytest_subprocess(
        str(compat / "test_offline_engine.py"),
        str(compat / "test_batch_format.py"),
        "--engine",
        "command",
        "--server-command",
        fake_server_command("--model", "{model}"),
        "--model",
        str(model),
        "-rs",
        "-p",
        "no:cacheprovider",
        timeout=240,
    )
    result.assert_outcomes(skipped=2)
    output = result.stdout.str()
    assert output.count("offline vLLM runs need a vLLM server launched by this run") == 2, output
    assert "hub id" not in output and "GGUF file" not in output, output
