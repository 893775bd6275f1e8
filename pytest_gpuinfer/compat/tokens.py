"""Token counts the way the server will count them, and prompts of exact token lengths.

Counts come from the model's own tokenizer when its files are here, else from the server's
tokenize route; chat is counted after the chat template with the generation prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuinfer.compat.findings import Finding, Unmet
from pytest_gpuinfer.compat.probe import ProbeError
from pytest_gpuinfer.load import prompts


@dataclass
class TokenCounter:
    """Counts tokens the way the server will: completions add BOS, chat applies the template."""

    source: str
    prompt_ids: Callable[[str], list[int]]
    chat_ids: Callable[[Sequence[dict[str, Any]]], list[int]] | None
    notes: list[str] = field(default_factory=list)

    def count(self, prompt: str) -> int:
        """Tokens of a completions prompt, special tokens included."""
        return len(self.prompt_ids(prompt))

    def count_chat(self, messages: Sequence[dict[str, Any]]) -> int:
        """Tokens of chat messages after the chat template with the generation prompt."""
        if self.chat_ids is None:
            raise Unmet(
                Finding.absent(
                    "chat token count",
                    f"cannot count chat tokens with {self.source}: {'; '.join(self.notes)}",
                )
            )
        return len(self.chat_ids(messages))


def local_counter(tokenizer: Any) -> TokenCounter:
    """A counter on the transformers tokenizer (chat through its chat template)."""

    def prompt_ids(text: str) -> list[int]:
        return list(tokenizer(text).input_ids)

    chat_ids: Callable[[Sequence[dict[str, Any]]], list[int]] | None = None
    notes: list[str] = []
    if getattr(tokenizer, "chat_template", None):

        def chat_ids(messages: Sequence[dict[str, Any]]) -> list[int]:
            rendered = tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
            return list(tokenizer(rendered, add_special_tokens=False).input_ids)
    else:
        notes.append("the tokenizer has no chat template")
    return TokenCounter("the local tokenizer (transformers)", prompt_ids, chat_ids, notes)


def exact_length_prompt(
    count: Callable[[str], int],
    target: int,
    *,
    words: Sequence[str] = prompts.FILLER_WORDS,
) -> str:
    """A prompt ``count`` counts as exactly ``target`` tokens (load.prompts), or ProbeError."""
    try:
        return prompts.exact_length_prompt(count, target, words=words)
    except prompts.PromptLengthError as exc:
        raise ProbeError(f"could not build the prompt: {exc}") from None


def first_difference(left: str, right: str) -> int:
    """Index of the first differing character (the shorter length when one is a prefix)."""
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if a != b:
            return index
    return min(len(left), len(right))
