"""Synthetic checkpoints shaped like real models: shapes, dtype, sizes, config, tokenizer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from pytest_gpuinfer.models.synthetic import (
    SHAPES,
    expected_file_size,
    main,
)


@pytest.mark.parametrize(
    ("name", "billions"),
    [("qwen2.5-0.5b", 0.494), ("qwen2.5-7b", 7.616), ("llama-3-8b", 8.030)],
)
def test_parameter_counts_match_the_real_models(name: str, billions: float) -> None:
    assert SHAPES[name].parameter_count() / 1e9 == pytest.approx(billions, abs=0.001)


def test_qwen_0_5b_shaped_checkpoint_with_two_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the command line, cut to 2 of 24 layers (0.3 GB instead of 1 GB: the embedding dominates)
    out = tmp_path / "qwen"
    assert main(["--shape", "qwen2.5-0.5b", "--layers", "2", "--seed", "3", "--out", str(out)]) == 0
    assert "GB" in capsys.readouterr().out
    shape = replace(SHAPES["qwen2.5-0.5b"], num_layers=2)
    weights = out / "model.safetensors"
    assert weights.stat().st_size == expected_file_size(shape)
    expected = shape.tensor_shapes()
    with safe_open(str(weights), "numpy") as handle:
        assert set(handle.keys()) == set(expected)
        for name, dims in expected.items():
            piece = handle.get_slice(name)
            assert tuple(piece.get_shape()) == dims, name
            assert piece.get_dtype() == "BF16", name
    assert expected["model.embed_tokens.weight"] == (151936, 896)
    assert expected["model.layers.1.self_attn.k_proj.weight"] == (128, 896)
    assert "lm_head.weight" not in expected  # Qwen2.5-0.5B ties its embeddings
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 151936 and config["torch_dtype"] == "bfloat16"
    assert config["num_key_value_heads"] == 2 and config["num_hidden_layers"] == 2
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert max(tokenizer["model"]["vocab"].values()) < config["vocab_size"]
    # the weights are random, not zeros: a bf16 sample of the MLP has spread
    raw = weights.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8 : 8 + header_len])
    start, end = meta["model.layers.0.mlp.up_proj.weight"]["data_offsets"]
    base = 8 + header_len
    bits = np.frombuffer(raw[base + start : base + start + 20000], dtype=np.uint16)
    values = (bits.astype(np.uint32) << 16).view(np.float32)
    assert 0.01 < float(values.std()) < 0.04 and end > start


def test_full_shapes_of_llama_3_8b_without_writing_it() -> None:
    shape = SHAPES["llama-3-8b"]
    shapes = shape.tensor_shapes()
    assert shapes["model.layers.31.mlp.gate_proj.weight"] == (14336, 4096)
    assert shapes["model.layers.0.self_attn.v_proj.weight"] == (1024, 4096)
    assert shapes["lm_head.weight"] == (128256, 4096)
    assert expected_file_size(shape) > 16 * 10**9
