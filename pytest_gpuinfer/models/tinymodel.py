"""The built-in offline model: a tiny Llama checkpoint with seeded random weights.

No model hub is needed. The tokenizer is a byte-level BPE trained here on a fixed corpus, the
weights come from a seeded NumPy generator, and every file is written with sorted keys, so the
same spec produces the same bytes on every machine. vLLM's CPU backend loads it (head_dim 64;
head_dim 16 kills the CPU attention kernel). It generates gibberish: tests check structure,
never meaning.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pytest_gpuinfer.models import manifest as model_manifest

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BUILTIN_MODEL_NAME = "gpuinfer-tiny-llama"
"""The served model name used for the built-in model."""

MANIFEST_NAME = "gpuinfer-manifest.json"

SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
)
BOS, EOS, PAD = SPECIAL_TOKENS[0], SPECIAL_TOKENS[1], SPECIAL_TOKENS[2]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}\n{% endif %}"
)

_CORPUS_PARAGRAPHS = (
    "The quick brown fox jumps over the lazy dog while the patient engineer measures latency.",
    "An inference server accepts a prompt, schedules it in a batch, and streams tokens back.",
    "Time to first token depends on the queue, the prefill of the prompt, and the scheduler.",
    "Inter-token latency is the gap between chunks; a chunk may carry more than one token.",
    "Memory on the device holds the weights, the activations, and the key and value cache.",
    "When the cache is full, new requests wait in the queue until running ones finish.",
    "A burst of traffic tests whether the server keeps every request and how fast it recovers.",
    "Numbers such as 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 and 3.14159 appear in logs.",
    'Punctuation matters: commas, periods. Questions? Exclamations! Quotes "like this" '
    "and 'this'; colons: semicolons; dashes - and (parentheses) [brackets] {braces}.",
    'def handler(request):\n    return {"status": 200, "tokens": [1, 2, 3]}\n',
    "Unicode text: café, naïve, Zürich, façade, señor, 東京, 北京, 안녕하세요, Привет, γειά, 🙂🚀.",
    "System prompts describe the assistant; user messages ask; the assistant answers.",
    "Health checks, model lists, completions, chat completions, and metrics are the routes.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Every good benchmark reports its sample count, its percentiles, and its own overhead.",
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and seed of a built-in checkpoint; every field changes the bytes written."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    vocab_target: int = 512
    max_position_embeddings: int = 2048
    seed: int = 1234
    format_version: int = 2
    """Bump whenever the written bytes change for the same spec, so caches are not reused."""

    @property
    def head_dim(self) -> int:
        """Per-head width; vLLM's CPU attention needs 64 or more here."""
        return self.hidden_size // self.num_heads

    def fingerprint(self) -> str:
        """Short stable hash naming the cache directory for this spec."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


DEFAULT_SPEC = TinyModelSpec()


class DecoderShape(Protocol):
    """The shape and seed a built-in decoder's weights and config are drawn from."""

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        ...

    @property
    def intermediate_size(self) -> int:
        """Width of the MLP."""
        ...

    @property
    def num_layers(self) -> int:
        """Decoder layers."""
        ...

    @property
    def num_heads(self) -> int:
        """Query heads."""
        ...

    @property
    def num_kv_heads(self) -> int:
        """Key and value heads."""
        ...

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        ...

    @property
    def max_position_embeddings(self) -> int:
        """Longest sequence."""
        ...

    @property
    def seed(self) -> int:
        """Seed of the weights."""
        ...


def default_cache_dir() -> Path:
    """Where built-in models are cached: $GPUINFER_CACHE_DIR, else the XDG cache directory."""
    explicit = os.environ.get("GPUINFER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "pytest-gpuinfer"


def corpus_text() -> str:
    """The fixed text the tokenizer is trained on (repeated so common merges win clearly)."""
    return "\n".join(_CORPUS_PARAGRAPHS * 3)


def train_bpe(vocab_target: int, special_tokens: Sequence[str]) -> Tokenizer:
    """A byte-level BPE trained on the built-in corpus (deterministic for a corpus and size);
    every built-in tokenizer starts from this recipe."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS_PARAGRAPHS * 3, trainer=trainer)
    return tokenizer


def _train_tokenizer(spec: TinyModelSpec) -> object:
    """Train the Llama's tokenizer: the built-in BPE, a BOS token before every sequence."""
    from tokenizers import processors

    tokenizer = train_bpe(spec.vocab_target, SPECIAL_TOKENS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS))],
    )
    return tokenizer


def decoder_weights(
    spec: DecoderShape, vocab_size: int, silent_ids: Sequence[int], *, qk_norm: bool = False
) -> dict[str, object]:
    """Seeded random Llama-style decoder weights (Qwen3's q/k norms with ``qk_norm``);
    ``silent_ids`` get zero output rows so greedy decoding never picks them."""
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    hidden, inter, hd = spec.hidden_size, spec.intermediate_size, spec.head_dim

    def normal(*shape: int) -> object:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(size: int) -> object:
        return np.ones(size, dtype=np.float32)

    tensors: dict[str, object] = {"model.embed_tokens.weight": normal(vocab_size, hidden)}
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.self_attn.q_proj.weight"] = normal(spec.num_heads * hd, hidden)
        tensors[f"{prefix}.self_attn.k_proj.weight"] = normal(spec.num_kv_heads * hd, hidden)
        tensors[f"{prefix}.self_attn.v_proj.weight"] = normal(spec.num_kv_heads * hd, hidden)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = normal(hidden, spec.num_heads * hd)
        if qk_norm:
            tensors[f"{prefix}.self_attn.q_norm.weight"] = ones(hd)
            tensors[f"{prefix}.self_attn.k_norm.weight"] = ones(hd)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = normal(inter, hidden)
        tensors[f"{prefix}.mlp.up_proj.weight"] = normal(inter, hidden)
        tensors[f"{prefix}.mlp.down_proj.weight"] = normal(hidden, inter)
        tensors[f"{prefix}.input_layernorm.weight"] = ones(hidden)
        tensors[f"{prefix}.post_attention_layernorm.weight"] = ones(hidden)
    tensors["model.norm.weight"] = ones(hidden)
    lm_head = (rng.standard_normal((vocab_size, hidden)) * 0.5).astype(np.float32)
    lm_head[list(silent_ids)] = 0.0
    tensors["lm_head.weight"] = lm_head
    return tensors


def decoder_config(spec: DecoderShape, vocab_size: int) -> dict[str, object]:
    """The config.json entries every built-in decoder shares: its shape, SiLU, float32, no bias,
    untied embeddings (the caller adds its architecture, norms, rope and token ids)."""
    return {
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "num_hidden_layers": spec.num_layers,
        "vocab_size": vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
    }


def _config(spec: TinyModelSpec, vocab_size: int, ids: dict[str, int]) -> dict[str, object]:
    """The Hugging Face config.json of the checkpoint."""
    return {
        **decoder_config(spec, vocab_size),
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "mlp_bias": False,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
    }


def added_token_entry(token: str, *, special: bool) -> dict[str, object]:
    """One ``added_tokens_decoder`` entry of tokenizer_config.json: the token, matched as is."""
    return {
        "content": token,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def write_json(path: Path, data: object) -> None:
    """Write JSON with sorted keys so the bytes do not depend on dict order."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def file_digests(model_dir: Path) -> dict[str, str]:
    """sha256 of every file in a model directory except the manifest itself."""
    return model_manifest.file_digests(model_dir, exclude=(MANIFEST_NAME,))


def write_model(out_dir: Path, spec: TinyModelSpec = DEFAULT_SPEC) -> Path:
    """Write the checkpoint files into ``out_dir`` (created) and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(spec)
    vocab_size = tokenizer.get_vocab_size()  # type: ignore[attr-defined]
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}  # type: ignore[attr-defined]
    tokenizer.save(str(out_dir / "tokenizer.json"))  # type: ignore[attr-defined]
    write_json(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "model_max_length": spec.max_position_embeddings,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
            "added_tokens_decoder": {
                str(ids[tok]): added_token_entry(tok, special=True) for tok in SPECIAL_TOKENS
            },
        },
    )
    write_json(
        out_dir / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD},
    )
    write_json(out_dir / "config.json", _config(spec, vocab_size, ids))
    write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": ids[BOS], "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]},
    )
    tensors = decoder_weights(spec, vocab_size, list(ids.values()))
    return write_weights_and_manifest(out_dir, tensors, asdict(spec), BUILTIN_MODEL_NAME)


def write_weights_and_manifest(
    out_dir: Path, tensors: dict[str, object], spec: dict[str, object], name: str
) -> Path:
    """Finish a checkpoint: its weights in model.safetensors, then the manifest holding the
    spec, the served name and every file's digest; return ``out_dir``."""
    from safetensors.numpy import save_file

    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})  # type: ignore[arg-type]
    write_json(
        out_dir / MANIFEST_NAME, {"spec": spec, "files": file_digests(out_dir), "name": name}
    )
    return out_dir


def verify_model(model_dir: Path) -> list[str]:
    """Compare a model directory with its manifest; return one line per mismatch (empty: intact)."""
    manifest_path = model_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        return [f"{model_dir} has no {MANIFEST_NAME}"]
    expected: dict[str, str] = json.loads(manifest_path.read_text())["files"]
    return model_manifest.compare_digests(expected, file_digests(model_dir))


def ensure_model(cache_dir: Path | None = None, spec: TinyModelSpec = DEFAULT_SPEC) -> Path:
    """Return the cached built-in model directory, writing it first if absent or damaged."""
    return ensure_written(
        f"{BUILTIN_MODEL_NAME}-{spec.fingerprint()}",
        lambda staging: write_model(staging, spec),
        cache_dir,
    )


def ensure_written(name: str, write: Callable[[Path], Path], cache_dir: Path | None = None) -> Path:
    """The cached directory ``name`` under the models cache, written by ``write`` when absent
    or not matching its manifest (staged, then renamed, so a crash leaves nothing half-done)."""
    root = (cache_dir or default_cache_dir()) / "models"
    target = root / name
    if target.is_dir() and not verify_model(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        write(staging)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process (an xdist worker) won the race; its copy is identical.
            if verify_model(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
