"""Small files in each real workload format, made here (nothing comes from a hub).

The tests, the benchmark and the docs' examples use these: a ShareGPT JSON file, JSONL prompt
rows, OpenAI chat JSONL, a Hugging Face dataset saved to disk (needs the ``datasets`` package),
a Mooncake JSONL trace and an Azure CSV trace. Texts are made of common words, seeded, so every
file is the same from run to run; lengths are in words (about a token each; the workloads count
them with the target's tokenizer).
"""

from __future__ import annotations

import csv
import json
import random
from datetime import datetime, timedelta
from pathlib import Path

WORDS = (
    *("the", "a", "and", "of", "is", "in", "on", "it", "we", "to", "sea", "light"),
    *("keeper", "ship", "night", "storm", "old", "bright", "cold", "harbour", "rope", "bell"),
)


def words(rng: random.Random, count: int) -> str:
    """``count`` words drawn from :data:`WORDS`."""
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _conversation(
    rng: random.Random, turns: int, prompt_words: tuple[int, int], reply_words: tuple[int, int]
) -> list[tuple[str, str]]:
    """(user, assistant) texts for ``turns`` turns of the given word-count ranges."""
    return [
        (words(rng, rng.randint(*prompt_words)), words(rng, rng.randint(*reply_words)))
        for _ in range(turns)
    ]


def write_sharegpt(
    path: str | Path,
    rows: int = 32,
    *,
    turns: int = 1,
    prompt_words: tuple[int, int] = (8, 64),
    reply_words: tuple[int, int] = (4, 32),
    seed: int = 0,
) -> Path:
    """A ShareGPT-format JSON array: ``{"id", "conversations": [{"from", "value"}, ...]}``."""
    rng = random.Random(seed)
    data = [
        {
            "id": f"sample-{i}",
            "conversations": [
                item
                for user, reply in _conversation(rng, turns, prompt_words, reply_words)
                for item in ({"from": "human", "value": user}, {"from": "gpt", "value": reply})
            ],
        }
        for i in range(rows)
    ]
    out = Path(path)
    out.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return out


def write_jsonl(
    path: str | Path,
    rows: int = 32,
    *,
    prompt_words: tuple[int, int] = (8, 64),
    output_tokens: tuple[int, int] = (4, 32),
    seed: int = 0,
) -> Path:
    """JSONL prompt rows with the output length to ask: ``{"prompt", "output_tokens"}``."""
    rng = random.Random(seed)
    out = Path(path)
    with out.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            row = {
                "prompt": words(rng, rng.randint(*prompt_words)),
                "output_tokens": rng.randint(*output_tokens),
            }
            handle.write(json.dumps(row) + "\n")
    return out


def chat_rows(
    rows: int,
    *,
    turns: int = 1,
    system: bool = False,
    prompt_words: tuple[int, int] = (8, 64),
    reply_words: tuple[int, int] = (4, 32),
    seed: int = 0,
) -> list[dict[str, list[dict[str, str]]]]:
    """OpenAI chat rows: ``{"messages": [system?, user, assistant, ...]}``."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        messages = [{"role": "system", "content": words(rng, 6)}] if system else []
        for user, reply in _conversation(rng, turns, prompt_words, reply_words):
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": reply},
            ]
        out.append({"messages": messages})
    return out


def write_openai_chat(
    path: str | Path, rows: int = 32, *, turns: int = 1, system: bool = False, seed: int = 0
) -> Path:
    """OpenAI chat (fine-tuning) JSONL: one ``{"messages": [...]}`` per line."""
    out = Path(path)
    with out.open("w", encoding="utf-8") as handle:
        for row in chat_rows(rows, turns=turns, system=system, seed=seed):
            handle.write(json.dumps(row) + "\n")
    return out


def write_hf_disk(directory: str | Path, rows: int = 32, *, turns: int = 1, seed: int = 0) -> Path:
    """A Hugging Face dataset of chat rows written with ``save_to_disk`` (needs ``datasets``)."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError(
            "writing a Hugging Face dataset needs the 'datasets' package: "
            "pip install 'pytest-gpuinfer[datasets]'"
        ) from None
    out = Path(directory)
    datasets.Dataset.from_list(chat_rows(rows, turns=turns, seed=seed)).save_to_disk(str(out))
    return out


def write_mooncake(
    path: str | Path,
    rows: int = 32,
    *,
    rate: float = 10.0,
    block_tokens: int = 16,
    blocks: tuple[int, int] = (1, 6),
    distinct_blocks: int = 24,
    output_tokens: tuple[int, int] = (4, 32),
    seed: int = 0,
) -> Path:
    """A Mooncake-format trace: ``{"timestamp" (ms), "input_length", "output_length",
    "hash_ids"}`` per line, Poisson arrivals at ``rate``, prompts of ``block_tokens`` blocks whose
    hash ids often repeat (shared prefixes), timestamps in whole milliseconds as published."""
    rng = random.Random(seed)
    out = Path(path)
    at = 0.0
    with out.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            count = rng.randint(*blocks)
            first = rng.randrange(distinct_blocks // 2)  # shared leading blocks
            hash_ids = [first] + [rng.randrange(distinct_blocks) for _ in range(count - 1)]
            row = {
                "timestamp": int(at * 1000),
                "input_length": count * block_tokens - rng.randrange(block_tokens),
                "output_length": rng.randint(*output_tokens),
                "hash_ids": hash_ids,
            }
            handle.write(json.dumps(row) + "\n")
            at += rng.expovariate(rate)
    return out


def write_azure(
    path: str | Path,
    rows: int = 32,
    *,
    rate: float = 10.0,
    context_tokens: tuple[int, int] = (8, 128),
    generated_tokens: tuple[int, int] = (4, 32),
    seed: int = 0,
) -> Path:
    """An Azure LLM inference trace CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens``, times
    written as the published files do (seven fraction digits)."""
    rng = random.Random(seed)
    out = Path(path)
    start = datetime(2023, 11, 16, 18, 15, 46)
    at = 0.0
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        for _ in range(rows):
            moment = start + timedelta(seconds=at)
            stamp = moment.strftime("%Y-%m-%d %H:%M:%S.%f") + str(rng.randrange(10))
            writer.writerow([stamp, rng.randint(*context_tokens), rng.randint(*generated_tokens)])
            at += rng.expovariate(rate)
    return out
