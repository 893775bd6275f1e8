"""The built-in Qwen3-shaped model and the LoRA adapters: reproducible bytes, the shape vLLM's
Qwen3 parsers need, and how --model builtin:NAME launches them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuinfer.models import builtin, lora, qwen3, tinymodel
from pytest_gpuinfer.targets.base import LaunchContext
from pytest_gpuinfer.targets.vllm import VLLMLauncher


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One freshly written Qwen3-shaped model."""
    return qwen3.write_model(tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="module")
def tokenizer(qwen3_dir: Path) -> Any:
    """Its transformers tokenizer."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(qwen3_dir))


def test_qwen3_written_twice_is_byte_identical(qwen3_dir: Path, tmp_path: Path) -> None:
    again = qwen3.write_model(tmp_path / "again")
    assert tinymodel.file_digests(qwen3_dir) == tinymodel.file_digests(again)
    assert tinymodel.verify_model(again) == []


def test_qwen3_config_has_q_and_k_norms_and_a_cpu_head_dim(qwen3_dir: Path) -> None:
    from safetensors.numpy import load_file

    config = json.loads((qwen3_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert config["head_dim"] == 64, "vLLM's CPU attention kills the engine at head_dim 16"
    tensors = load_file(str(qwen3_dir / "model.safetensors"))
    for layer in range(config["num_hidden_layers"]):
        for norm in ("q_norm", "k_norm"):
            assert tensors[f"model.layers.{layer}.self_attn.{norm}.weight"].shape == (64,)
    vocab = json.loads((qwen3_dir / "tokenizer.json").read_text())
    added = {token["content"] for token in vocab["added_tokens"]}
    assert config["vocab_size"] == len(vocab["model"]["vocab"]) + len(
        added - set(vocab["model"]["vocab"])
    )


def test_parser_tags_are_single_tokens_that_survive_decoding(tokenizer: Any) -> None:
    """vLLM's Qwen3 parsers look these up by text: one token each, kept when decoding."""
    for tag in qwen3.TAG_TOKENS:
        ids = tokenizer(tag, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{tag} is {ids}"
        assert tokenizer.decode(ids, skip_special_tokens=True) == tag
    for marker in qwen3.CHATML_TOKENS:
        ids = tokenizer(marker, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True) == ""
    assert tokenizer.eos_token == qwen3.IM_END and tokenizer.bos_token is None


def test_chat_template_renders_thinking_tools_and_results(tokenizer: Any) -> None:
    user = [{"role": "user", "content": "Weather?"}]
    thinking = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    quiet = tokenizer.apply_chat_template(
        user, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    assert thinking == "<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n"
    assert quiet == thinking + "<think>\n\n</think>\n\n"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    conversation = [
        *user,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "sunny"},
    ]
    text = tokenizer.apply_chat_template(
        conversation, tools=[tool], add_generation_prompt=True, tokenize=False
    )
    assert '<tools>\n{"name": "f", "parameters": {"type": "object"}}\n</tools>' in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
        in text
    )
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in text


def test_adapter_is_peft_shaped_seeded_and_fits_the_model(qwen3_dir: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    first = lora.write_adapter(qwen3_dir, tmp_path / "a", "base")
    second = lora.write_adapter(qwen3_dir, tmp_path / "b", "base")
    assert tinymodel.file_digests(first) == tinymodel.file_digests(second)
    config = json.loads((first / lora.CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert set(config["target_modules"]) == set(lora.TARGET_MODULES)
    tensors = load_file(str(first / lora.WEIGHTS_NAME))
    model = json.loads((qwen3_dir / "config.json").read_text())
    shapes = lora.module_shapes(model)
    assert len(tensors) == 2 * len(shapes) == 2 * 7 * model["num_hidden_layers"]
    for module, (rows, cols) in shapes.items():
        assert tensors[f"base_model.model.{module}.lora_A.weight"].shape == (8, cols)
        assert tensors[f"base_model.model.{module}.lora_B.weight"].shape == (rows, 8)
        assert abs(float(tensors[f"base_model.model.{module}.lora_B.weight"].std()) - 0.1) < 0.03
    broken = load_file(
        str(lora.write_broken_adapter(qwen3_dir, tmp_path / "x", "base") / lora.WEIGHTS_NAME)
    )
    module, (rows, cols) = sorted(shapes.items())[0]
    assert broken[f"base_model.model.{module}.lora_A.weight"].shape != (8, cols)


def test_builtin_names_resolve_and_unknown_ones_are_refused() -> None:
    assert builtin.resolve(None) is builtin.LLAMA
    assert builtin.resolve("builtin:qwen3") is builtin.QWEN3
    assert builtin.resolve("builtin") is builtin.LLAMA
    assert builtin.resolve("/models/x") is None
    with pytest.raises(builtin.UnknownBuiltinModel, match="builtin:llama, builtin:qwen3"):
        builtin.named("builtin:gpt")


def test_vllm_launch_of_builtin_qwen3_switches_its_features_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Parsers, LoRA with its adapter, float32 and runtime loading; the run's args come last."""
    monkeypatch.setattr("pytest_gpuinfer.targets.vllm.local_version", lambda: "0.32.0")
    ctx = LaunchContext(
        engine="vllm",
        port=8000,
        work_dir=tmp_path,
        model="builtin:qwen3",
        engine_args=("--dtype", "bfloat16"),
    )
    plan = VLLMLauncher().plan(ctx)
    argv = plan.argv
    assert plan.served_name == "gpuinfer-tiny-qwen3"
    for flag, value in [
        ("--tool-call-parser", "hermes"),
        ("--reasoning-parser", "qwen3"),
        ("--max-lora-rank", "8"),
        ("--served-model-name", "gpuinfer-tiny-qwen3"),
        ("--max-model-len", "1024"),
    ]:
        assert argv[argv.index(flag) + 1] == value, argv
    assert "--enable-lora" in argv and "--enable-auto-tool-choice" in argv
    lora_spec = argv[argv.index("--lora-modules") + 1]
    assert (
        lora_spec.startswith("gpuinfer-tiny-qwen3-lora=") and Path(lora_spec.split("=")[1]).is_dir()
    )
    dtypes = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--dtype"]
    assert dtypes == ["float32", "bfloat16"], "the run's own --dtype must come last and win"
    assert plan.env[builtin.RUNTIME_LORA_ENV] == "True"
    embed = VLLMLauncher().plan(
        ctx.__class__(engine="vllm", port=1, work_dir=tmp_path, model="builtin:qwen3-embed")
    )
    assert embed.argv[embed.argv.index("--runner") + 1] == "pooling"
    assert "--enable-lora" not in embed.argv and "--reasoning-parser" not in embed.argv


def test_unknown_builtin_model_is_a_one_line_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--model=builtin:gpt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and "'builtin:gpt' names no built-in model" in errors[0], errors
