"""The built-in Qwen3-shaped model: ``Qwen3ForCausalLM`` with q/k norms, tiny, seeded, offline.

Beside the built-in Llama it gives the compat suite what the stacks people deploy rely on: a
ChatML chat template in Qwen3's style (``enable_thinking``, tools rendered in a ``<tools>``
block, tool calls in ``<tool_call>`` tags, tool results in ``<tool_response>`` tags) and the
tokens the engines' Qwen3 reasoning and tool parsers look up in the vocabulary (``<think>``,
``</think>``, ``<tool_call>``, ``</tool_call>``). As in Qwen3's own tokenizer, the ChatML markers
are special tokens and the think and tool tags are added tokens that stay in decoded text.

The tokenizer is the Llama's byte-level BPE recipe (same corpus, same seedless trainer) with
these tokens added; weights come from a seeded NumPy generator; files are written with sorted
keys, so the same spec gives the same bytes everywhere. head_dim is 64 (vLLM's CPU attention
kills the engine at 16). It generates gibberish: tests check structure, never meaning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pytest_gpuinfer.models import tinymodel

BUILTIN_QWEN3_NAME = "gpuinfer-tiny-qwen3"
"""The served model name of the built-in Qwen3-shaped model."""

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHATML_TOKENS = (ENDOFTEXT, IM_START, IM_END)
"""Special tokens (skipped when decoding with skip_special_tokens)."""

THINK_START, THINK_END = "<think>", "</think>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<tool_response>", "</tool_response>"
TAG_TOKENS = (
    TOOL_CALL_START,
    TOOL_CALL_END,
    TOOL_RESPONSE_START,
    TOOL_RESPONSE_END,
    THINK_START,
    THINK_END,
)
"""Added tokens the parsers look up by text; not special, so they survive decoding."""

CHAT_TEMPLATE = """\
{%- macro render_content(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content -%}{%- for part in content -%}
{%- if part.type == 'text' -%}{{ part.text }}{%- endif -%}
{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set first_is_system = messages and messages[0].role == 'system' -%}
{%- if tools or first_is_system -%}
{{ '<|im_start|>system\\n' }}
{%- if first_is_system -%}{{ render_content(messages[0].content) }}{%- endif -%}
{%- if tools -%}
{%- if first_is_system -%}{{ '\\n\\n' }}{%- endif -%}
{{ '# Tools\\n\\nYou may call functions to help with the request. Their signatures are in '
   '<tools></tools> tags:\\n<tools>' }}
{%- for tool in tools -%}{{ '\\n' }}{{ (tool.function if tool.function is defined else tool)
   | tojson }}{%- endfor -%}
{{ '\\n</tools>\\n\\nTo call one, answer with a JSON object holding its name and arguments '
   'inside <tool_call></tool_call> tags:\\n<tool_call>\\n'
   '{"name": <function name>, "arguments": <arguments object>}\\n</tool_call>' }}
{%- endif -%}
{{ '<|im_end|>\\n' }}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' and loop.first -%}
{%- elif message.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{ '<|im_start|>user' }}
{%- endif -%}
{{ '\\n<tool_response>\\n' }}{{ render_content(message.content) }}{{ '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{ '<|im_end|>\\n' }}
{%- endif -%}
{%- else -%}
{{ '<|im_start|>' + message.role + '\\n' }}{{ render_content(message.content) }}
{%- if message.role == 'assistant' and message.tool_calls -%}
{%- for call in message.tool_calls -%}
{%- set function = call.function if call.function is defined else call -%}
{%- if (message.content or not loop.first) -%}{{ '\\n' }}{%- endif -%}
{{ '<tool_call>\\n{"name": "' }}{{ function.name }}{{ '", "arguments": ' }}
{%- if function.arguments is string -%}{{ function.arguments }}
{%- else -%}{{ function.arguments | tojson }}{%- endif -%}
{{ '}\\n</tool_call>' }}
{%- endfor -%}
{%- endif -%}
{{ '<|im_end|>\\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and not enable_thinking -%}{{ '<think>\\n\\n</think>\\n\\n' }}
{%- endif -%}
{%- endif -%}
"""
"""ChatML in Qwen3's style, written for this model: tools in the system turn, tool calls and
tool results in their tags, and ``enable_thinking=False`` closing an empty think block."""


@dataclass(frozen=True)
class Qwen3Spec:
    """Shape and seed of the built-in Qwen3-shaped checkpoint; every field changes the bytes."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 64
    """vLLM's CPU attention needs 64 here (16 kills the engine on the first request)."""
    vocab_target: int = 512
    max_position_embeddings: int = 2048
    seed: int = 3003
    format_version: int = 1
    """Bump whenever the written bytes change for the same spec, so caches are not reused."""

    def fingerprint(self) -> str:
        """Short stable hash naming the cache directory for this spec."""
        blob = json.dumps({"family": "qwen3", **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


DEFAULT_QWEN3_SPEC = Qwen3Spec()


def _train_tokenizer(spec: Qwen3Spec) -> object:
    """Byte-level BPE on the built-in corpus, ChatML special tokens, tag tokens added after."""
    from tokenizers import AddedToken

    tokenizer = tinymodel.train_bpe(spec.vocab_target, CHATML_TOKENS)
    tokenizer.add_tokens([AddedToken(tag, normalized=False, special=False) for tag in TAG_TOKENS])
    return tokenizer


def _config(spec: Qwen3Spec, vocab_size: int, ids: dict[str, int]) -> dict[str, object]:
    """The Hugging Face config.json of the checkpoint (Qwen3ForCausalLM)."""
    return {
        **tinymodel.decoder_config(spec, vocab_size),
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "max_window_layers": spec.num_layers,
        "use_sliding_window": False,
        "sliding_window": None,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[ENDOFTEXT],
    }


def _tokenizer_config(spec: Qwen3Spec, ids: dict[str, int]) -> dict[str, object]:
    """tokenizer_config.json: no BOS (as Qwen), EOS <|im_end|>, the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "add_bos_token": False,
        "model_max_length": spec.max_position_embeddings,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(ids[tok]): tinymodel.added_token_entry(tok, special=tok in CHATML_TOKENS)
            for tok in (*CHATML_TOKENS, *TAG_TOKENS)
        },
    }


def write_model(out_dir: Path, spec: Qwen3Spec = DEFAULT_QWEN3_SPEC) -> Path:
    """Write the checkpoint files into ``out_dir`` (created) and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(spec)
    vocab_size = tokenizer.get_vocab_size()  # type: ignore[attr-defined]
    ids = {tok: tokenizer.token_to_id(tok) for tok in (*CHATML_TOKENS, *TAG_TOKENS)}  # type: ignore[attr-defined]
    tokenizer.save(str(out_dir / "tokenizer.json"))  # type: ignore[attr-defined]
    tinymodel.write_json(out_dir / "tokenizer_config.json", _tokenizer_config(spec, ids))
    tinymodel.write_json(
        out_dir / "special_tokens_map.json", {"eos_token": IM_END, "pad_token": ENDOFTEXT}
    )
    tinymodel.write_json(out_dir / "config.json", _config(spec, vocab_size, ids))
    tinymodel.write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": ids[ENDOFTEXT],
            "eos_token_id": ids[IM_END],
            "pad_token_id": ids[ENDOFTEXT],
        },
    )
    # Greedy decoding never picks a ChatML marker, so generations run to max_tokens.
    silent = [ids[tok] for tok in CHATML_TOKENS]
    tensors = tinymodel.decoder_weights(spec, vocab_size, silent, qk_norm=True)
    return tinymodel.write_weights_and_manifest(
        out_dir, tensors, {"family": "qwen3", **asdict(spec)}, BUILTIN_QWEN3_NAME
    )


def ensure_model(cache_dir: Path | None = None, spec: Qwen3Spec = DEFAULT_QWEN3_SPEC) -> Path:
    """Return the cached Qwen3-shaped model directory, writing it first if absent or damaged."""
    return tinymodel.ensure_written(
        f"{BUILTIN_QWEN3_NAME}-{spec.fingerprint()}",
        lambda staging: write_model(staging, spec),
        cache_dir,
    )
