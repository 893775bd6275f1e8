"""What every feature check needs of the server: a client, the model, who serves it, its probes.

It also shapes requests for random-weight models, whose gibberish would otherwise defeat a
structural check without saying anything about the server:

- JSON grammars allow any whitespace between tokens, and a random model, once it meets a
  whitespace token, tends to repeat it until ``max_tokens`` cuts the JSON off. Checks that
  validate forced JSON bias every whitespace-only token down (``logit_bias`` -100, an OpenAI
  parameter); the grammar still decides which tokens are allowed, so the output is the same
  JSON without the padding.
- A reasoning model that is asked for a tool call or a schema while thinking gets neither until
  its thinking ends, which a random model never does: those checks switch thinking off through
  the chat template (``chat_template_kwargs.enable_thinking``) when the server reasons.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from pytest_gpuinfer.compat.probe import ServerProbe

WHITESPACE_PROBES = (" ", "  ", "   ", "    ", "\n", "\n\n", "\t", "\r", " \n", "\r\n", "\n ")
"""Whitespace strings tokenized through the server when no local tokenizer is at hand."""

MAX_BIASED_TOKENS = 300
"""OpenAI accepts at most 300 logit_bias entries."""

Identity = tuple[str, str | None]
"""(engine family, version), e.g. ("vllm", "0.32.0"), for the deviation table."""


@dataclass
class CompatTarget:
    """The server under test as the feature checks see it."""

    client: httpx.Client
    model: str
    identity: Identity
    probe: ServerProbe
    tokenizer: Any | None = None
    """The model's transformers tokenizer when its files are here (None on a bare endpoint)."""
    _whitespace: list[int] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def chat_request(self, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A greedy chat request body for the served model."""
        return {"model": self.model, "messages": messages, "temperature": 0.0, **extra}

    def token_id(self, text: str) -> int | None:
        """The id of ``text`` when it is a single token (local tokenizer, else /tokenize)."""
        ids = self._encode(text)
        return ids[0] if len(ids) == 1 else None

    def _encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (empty when nothing can tokenize)."""
        from pytest_gpuinfer.compat.findings import Unmet

        if self.tokenizer is not None:
            return list(self.tokenizer(text, add_special_tokens=False).input_ids)
        if not self.probe.tokenize_route().available:
            return []
        try:
            return self.probe.tokenize(text, add_special_tokens=False)
        except Unmet:
            return []

    def whitespace_tokens(self) -> list[int]:
        """Ids of tokens that decode to whitespace only (at most MAX_BIASED_TOKENS)."""
        with self._lock:
            if self._whitespace is not None:
                return self._whitespace
        found: list[int] = []
        if self.tokenizer is not None:
            vocab = self.tokenizer.get_vocab()
            for token_id in sorted(vocab.values()):
                text = self.tokenizer.decode([token_id])
                if text and not text.strip():
                    found.append(token_id)
        else:
            for text in WHITESPACE_PROBES:
                ids = self._encode(text)
                if len(ids) == 1 and ids[0] not in found:
                    found.append(ids[0])
        with self._lock:
            self._whitespace = found[:MAX_BIASED_TOKENS]
            return self._whitespace

    def compact_json(self, favour: dict[int, float] | None = None) -> dict[str, Any]:
        """``logit_bias`` that keeps forced JSON free of whitespace padding (see the module)."""
        bias = {str(token_id): -100.0 for token_id in self.whitespace_tokens()}
        for token_id, value in (favour or {}).items():
            bias[str(token_id)] = value
        return {"logit_bias": bias} if bias else {}
