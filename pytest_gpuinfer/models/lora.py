"""Tiny seeded LoRA adapters in PEFT's file format, for the built-in models.

An adapter is a directory with ``adapter_config.json`` and ``adapter_model.safetensors`` whose
tensors are named as PEFT saves them (``base_model.model.<module>.lora_A.weight``, rank x in;
``lora_B.weight``, out x rank). PEFT itself is not needed to write or serve one. The factors are
seeded random and large enough that greedy output differs from the base model's, so a check can
tell an adapter that was applied from one that was silently ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pytest_gpuinfer.models import tinymodel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterSpec:
    """Rank, scale and seed of an adapter; every field changes the bytes written."""

    rank: int = 8
    alpha: int = 16
    init_std: float = 0.1
    """Standard deviation of both factors: the update (alpha/rank * B @ A) is about three times
    the base weights' spread, enough to change greedy tokens."""
    seed: int = 4242
    format_version: int = 1

    def fingerprint(self, base_fingerprint: str) -> str:
        """Short stable hash of this spec on a given base model."""
        blob = json.dumps({"base": base_fingerprint, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


DEFAULT_ADAPTER = AdapterSpec()


def module_shapes(config: dict[str, object]) -> dict[str, tuple[int, int]]:
    """(out, in) of every LoRA target module of a Llama/Qwen3-style config, by module path."""

    def field(name: str) -> int:
        value = config[name]
        if not isinstance(value, int):
            raise ValueError(f"config.json field {name} is {value!r}, not an integer")
        return value

    hidden, inter = field("hidden_size"), field("intermediate_size")
    heads, kv_heads = field("num_attention_heads"), field("num_key_value_heads")
    head_dim = int(config.get("head_dim") or hidden // heads)  # type: ignore[call-overload]
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(field("num_hidden_layers")):
        attn, mlp = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
        shapes[f"{attn}.q_proj"] = (heads * head_dim, hidden)
        shapes[f"{attn}.k_proj"] = (kv_heads * head_dim, hidden)
        shapes[f"{attn}.v_proj"] = (kv_heads * head_dim, hidden)
        shapes[f"{attn}.o_proj"] = (hidden, heads * head_dim)
        shapes[f"{mlp}.gate_proj"] = (inter, hidden)
        shapes[f"{mlp}.up_proj"] = (inter, hidden)
        shapes[f"{mlp}.down_proj"] = (hidden, inter)
    return shapes


def adapter_config(spec: AdapterSpec, base_model: str) -> dict[str, object]:
    """The PEFT ``adapter_config.json`` of a LoRA on every attention and MLP projection."""
    return {
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": spec.rank,
        "target_modules": list(TARGET_MODULES),
        "task_type": "CAUSAL_LM",
    }


def write_adapter(
    model_dir: Path, out_dir: Path, base_model: str, spec: AdapterSpec = DEFAULT_ADAPTER
) -> Path:
    """Write a seeded LoRA for the checkpoint in ``model_dir`` into ``out_dir``; return it."""
    import numpy as np
    from safetensors.numpy import save_file

    config = json.loads((model_dir / "config.json").read_text())
    rng = np.random.default_rng(spec.seed)
    tensors: dict[str, object] = {}
    for module, (rows, cols) in sorted(module_shapes(config).items()):
        name = f"base_model.model.{module}"
        a = rng.standard_normal((spec.rank, cols)) * spec.init_std
        b = rng.standard_normal((rows, spec.rank)) * spec.init_std
        tensors[f"{name}.lora_A.weight"] = a.astype(np.float32)
        tensors[f"{name}.lora_B.weight"] = b.astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})  # type: ignore[arg-type]
    tinymodel.write_json(out_dir / CONFIG_NAME, adapter_config(spec, base_model))
    tinymodel.write_json(
        out_dir / tinymodel.MANIFEST_NAME,
        {"spec": asdict(spec), "files": tinymodel.file_digests(out_dir), "name": base_model},
    )
    return out_dir


def write_broken_adapter(model_dir: Path, out_dir: Path, base_model: str) -> Path:
    """An adapter whose weights do not fit its base model (rank 8 declared, factors of another
    width): a server must refuse it with an error, not load it or crash."""
    import numpy as np
    from safetensors.numpy import save_file

    spec = DEFAULT_ADAPTER
    config = json.loads((model_dir / "config.json").read_text())
    module, (rows, cols) = sorted(module_shapes(config).items())[0]
    name = f"base_model.model.{module}"
    tensors = {
        f"{name}.lora_A.weight": np.zeros((spec.rank, cols + 3), dtype=np.float32),
        f"{name}.lora_B.weight": np.zeros((rows + 5, spec.rank), dtype=np.float32),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS_NAME), metadata={"format": "pt"})
    tinymodel.write_json(out_dir / CONFIG_NAME, adapter_config(spec, base_model))
    return out_dir
