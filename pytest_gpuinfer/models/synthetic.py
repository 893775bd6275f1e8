"""Synthetic checkpoints shaped like real models: real tensor shapes and dtype, random weights.

OOM and memory tests on air-gapped GPU runners need realistic memory and compute without a
download. From a known config (Qwen2.5-0.5B, Qwen2.5-7B, Llama-3-8B) this writes a Hugging Face
directory whose ``model.safetensors`` has every tensor of the real model with its shape and
dtype (bf16), filled with seeded random values, plus the built-in tokenizer (its ids all fall
below the config's vocabulary size, which is kept). It generates gibberish.

The file is streamed tensor by tensor, so an 8B checkpoint (16 GB) is written with little
memory. Large tensors are filled from a pool of random bf16 values at random offsets (fast, and
still random-looking to the kernels); small ones get fresh values.

    python -m pytest_gpuinfer.models.synthetic --shape qwen2.5-0.5b --out /tmp/qwen-shaped
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pytest_gpuinfer.models import tinymodel


@dataclass(frozen=True)
class ModelShape:
    """The config fields that decide tensor shapes, for one real model family member."""

    name: str
    architecture: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.hidden_size // self.num_heads

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's name and shape, in Hugging Face naming."""
        hidden, hd = self.hidden_size, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, hidden)
        }
        for layer in range(self.num_layers):
            p = f"model.layers.{layer}"
            shapes[f"{p}.self_attn.q_proj.weight"] = (self.num_heads * hd, hidden)
            shapes[f"{p}.self_attn.k_proj.weight"] = (self.num_kv_heads * hd, hidden)
            shapes[f"{p}.self_attn.v_proj.weight"] = (self.num_kv_heads * hd, hidden)
            if self.qkv_bias:
                shapes[f"{p}.self_attn.q_proj.bias"] = (self.num_heads * hd,)
                shapes[f"{p}.self_attn.k_proj.bias"] = (self.num_kv_heads * hd,)
                shapes[f"{p}.self_attn.v_proj.bias"] = (self.num_kv_heads * hd,)
            shapes[f"{p}.self_attn.o_proj.weight"] = (hidden, self.num_heads * hd)
            shapes[f"{p}.mlp.gate_proj.weight"] = (self.intermediate_size, hidden)
            shapes[f"{p}.mlp.up_proj.weight"] = (self.intermediate_size, hidden)
            shapes[f"{p}.mlp.down_proj.weight"] = (hidden, self.intermediate_size)
            shapes[f"{p}.input_layernorm.weight"] = (hidden,)
            shapes[f"{p}.post_attention_layernorm.weight"] = (hidden,)
        shapes["model.norm.weight"] = (hidden,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, hidden)
        return shapes

    def parameter_count(self) -> int:
        """Number of parameters (what the real model card states, for the real shapes)."""
        return sum(int(np.prod(shape)) for shape in self.tensor_shapes().values())


SHAPES: dict[str, ModelShape] = {
    "qwen2.5-0.5b": ModelShape(
        "qwen2.5-0.5b", "Qwen2ForCausalLM", "qwen2", 896, 4864, 24, 14, 2, 151936, 32768,
        1_000_000.0, True, True,
    ),
    "qwen2.5-7b": ModelShape(
        "qwen2.5-7b", "Qwen2ForCausalLM", "qwen2", 3584, 18944, 28, 28, 4, 152064, 32768,
        1_000_000.0, False, True,
    ),
    "llama-3-8b": ModelShape(
        "llama-3-8b", "LlamaForCausalLM", "llama", 4096, 14336, 32, 32, 8, 128256, 8192,
        500_000.0, False, False, 1e-5,
    ),
}  # fmt: skip
"""Known configs, from the models' published config.json files."""

BYTES_PER_ELEMENT = 2
"""bf16."""

_POOL_ELEMENTS = 1 << 22
_CHUNK_ELEMENTS = 1 << 22


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values as bf16 bit patterns (round to nearest even), as uint16."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def _fill(
    name: str, shape: tuple[int, ...], rng: np.random.Generator, pool: np.ndarray
) -> Iterator[bytes]:
    """The tensor's bf16 bytes in chunks: ones for norms, zeros for biases, random weights."""
    count = int(np.prod(shape))
    if name.endswith("norm.weight"):
        yield _bf16_bits(np.ones(count, np.float32)).tobytes()
        return
    if name.endswith(".bias"):
        yield bytes(count * BYTES_PER_ELEMENT)
        return
    if count <= _POOL_ELEMENTS:
        yield _bf16_bits(rng.standard_normal(count, np.float32) * 0.02).tobytes()
        return
    written = 0
    while written < count:
        size = min(_CHUNK_ELEMENTS, count - written, _POOL_ELEMENTS)
        start = int(rng.integers(0, _POOL_ELEMENTS - size + 1))
        yield pool[start : start + size].tobytes()
        written += size


def _header(shape: ModelShape) -> bytes:
    """The safetensors JSON header (padded to 8 bytes) with every tensor's offsets."""
    entries: dict[str, object] = {"__metadata__": {"format": "pt", "synthetic": shape.name}}
    offset = 0
    for name, dims in shape.tensor_shapes().items():
        size = int(np.prod(dims)) * BYTES_PER_ELEMENT
        entries[name] = {
            "dtype": "BF16",
            "shape": list(dims),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def _config(shape: ModelShape, ids: dict[str, int]) -> dict[str, object]:
    """The Hugging Face config.json of the synthetic checkpoint."""
    config: dict[str, object] = {
        "architectures": [shape.architecture],
        "model_type": shape.model_type,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rope_theta,
        "rms_norm_eps": shape.rms_norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": shape.tie_word_embeddings,
        "torch_dtype": "bfloat16",
        "initializer_range": 0.02,
        "bos_token_id": ids[tinymodel.BOS],
        "eos_token_id": ids[tinymodel.EOS],
        "pad_token_id": ids[tinymodel.PAD],
        "gpuinfer_synthetic": f"random weights shaped like {shape.name}",
    }
    if shape.model_type == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    return config


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_synthetic(
    out_dir: Path, shape: ModelShape | str, *, seed: int = 0, tokenizer_dir: Path | None = None
) -> Path:
    """Write a checkpoint with ``shape``'s tensors (bf16, random) and the built-in tokenizer."""
    spec = SHAPES[shape] if isinstance(shape, str) else shape
    source = tokenizer_dir or tinymodel.ensure_model()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, out_dir / name)
    vocab = json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]
    added = json.loads((source / "tokenizer.json").read_text()).get("added_tokens", [])
    ids = {token["content"]: int(token["id"]) for token in added}
    ids.update({k: int(v) for k, v in vocab.items() if k in tinymodel.SPECIAL_TOKENS})
    if max(ids.values()) >= spec.vocab_size:
        raise ValueError(f"the built-in tokenizer does not fit a vocabulary of {spec.vocab_size}")
    config = _config(spec, ids)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    rng = np.random.default_rng(seed)
    pool = _bf16_bits(rng.standard_normal(_POOL_ELEMENTS, np.float32) * 0.02)
    header = _header(spec)
    target = out_dir / "model.safetensors"
    partial = target.with_suffix(".partial")
    with partial.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)))
        handle.write(header)
        for name, dims in spec.tensor_shapes().items():
            for chunk in _fill(name, dims, rng, pool):
                handle.write(chunk)
    partial.replace(target)
    return out_dir


def expected_file_size(shape: ModelShape) -> int:
    """Bytes the safetensors file of ``shape`` must have: header plus every tensor."""
    return 8 + len(_header(shape)) + shape.parameter_count() * BYTES_PER_ELEMENT


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: write a synthetic checkpoint and print its directory and size."""
    parser = argparse.ArgumentParser(
        prog="gpuinfer-make-synthetic",
        description="Write random weights shaped like a real model (no download).",
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, help="keep only this many layers (smaller file)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    if args.layers:
        shape = replace(shape, num_layers=args.layers)
    write_synthetic(args.out, shape, seed=args.seed)
    size = (args.out / "model.safetensors").stat().st_size
    print(f"{args.out} ({shape.parameter_count() / 1e9:.2f} B parameters, {size / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
