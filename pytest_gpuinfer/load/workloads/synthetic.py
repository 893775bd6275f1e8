"""Workloads made up on the spot: exact-length prompts, given texts, shared prefixes, embeddings.

* :class:`Synthetic` - prompts of exactly ``input_tokens`` target tokens (each a different
  three-word opening, then one filler word repeated), ``output_tokens`` each.
* :class:`Prompts` - the given prompt texts, cycled.
* :class:`SharedPrefix` - ``n_prefixes`` system prompts of ``prefix_tokens`` tokens, shared
  round-robin by the requests, each with its own ``suffix_tokens``-token question; with
  ``shared=False`` every request gets a prefix of its own of the same length: the control run
  for a prefix-cache comparison.
* :class:`Embeddings` - ``/v1/embeddings`` requests of ``batch`` inputs of ``input_tokens``
  tokens each (or texts from a dataset file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_gpuinfer.load.client import RequestSpec
from pytest_gpuinfer.load.prompts import build_prompts, token_words
from pytest_gpuinfer.load.workloads.base import (
    WORKLOADS,
    PreparedWorkload,
    WorkloadContext,
    body_extras,
    check_count,
)

DEFAULT_PROMPT = "Tell me a story about a lighthouse keeper."


@WORKLOADS.register("synthetic")
@dataclass(frozen=True)
class Synthetic:
    """Prompts of exactly ``input_tokens`` target tokens, asking for ``output_tokens`` each."""

    input_tokens: int = 32
    output_tokens: int = 64
    ignore_eos: bool = False
    varied: bool = True
    """Each prompt opens differently, so the prefix cache does not turn the run into a cache
    benchmark; False repeats one prompt."""
    seed: int = 0
    prompts: int = 64
    """Distinct prompts built at most (cycled over the run)."""
    extra_body: dict[str, Any] | None = None

    def prepare(self, context: WorkloadContext) -> PreparedWorkload:
        """Build (and count) the prompts through the target's tokenizer."""
        count = min(self.prompts, check_count(context.count, self.prompts))
        if context.endpoint == "embeddings":
            raise ValueError("Synthetic builds generation requests; use Embeddings(...)")
        prompt_set = build_prompts(
            context.counter,
            self.input_tokens,
            count=count,
            varied=self.varied,
            seed=self.seed,
            endpoint=context.endpoint,
        )
        extras = body_extras(self.ignore_eos, self.extra_body)
        specs = [
            RequestSpec(
                text,
                self.output_tokens,
                stream=context.stream,
                extra_body=extras,
                input_tokens=self.input_tokens,
            )
            for text in prompt_set
        ]
        info = {
            "name": "synthetic",
            **prompt_set.to_dict(),
            "output_tokens": self.output_tokens,
            "ignore_eos": self.ignore_eos,
        }
        text = f"{prompt_set.describe()}; {self.output_tokens} output tokens" + (
            " (ignore_eos)" if self.ignore_eos else ""
        )
        return PreparedWorkload(specs, info, text)


@WORKLOADS.register("prompt")
@dataclass(frozen=True)
class Prompts:
    """The given prompt text(s), cycled, asking for ``output_tokens`` each."""

    texts: tuple[str, ...] | str = DEFAULT_PROMPT
    output_tokens: int = 64
    ignore_eos: bool = False
    input_tokens: int | None = None
    """The texts' length when already known (they are counted otherwise)."""
    extra_body: dict[str, Any] | None = None

    def prepare(self, context: WorkloadContext) -> PreparedWorkload:
        """Count each distinct text once (when a counter is at hand and no length is given)."""
        texts = (self.texts,) if isinstance(self.texts, str) else tuple(self.texts)
        if not texts:
            raise ValueError("Prompts needs at least one prompt text")
        counter = context.counter
        lengths = {
            t: self.input_tokens
            if self.input_tokens is not None or counter is None
            else counter.count(t)
            for t in set(texts)
        }
        extras = body_extras(self.ignore_eos, self.extra_body)
        specs = [
            RequestSpec(
                t,
                self.output_tokens,
                stream=context.stream,
                extra_body=extras,
                input_tokens=lengths[t],
            )
            for t in texts
        ]
        info = {
            "name": "prompt",
            "prompts": len(texts),
            "output_tokens": self.output_tokens,
            "ignore_eos": self.ignore_eos,
            "source": counter.source if counter is not None else None,
        }
        return PreparedWorkload(
            specs, info, f"prompts: {len(texts)} given text(s); {self.output_tokens} output tokens"
        )


@WORKLOADS.register("shared-prefix")
@dataclass(frozen=True)
class SharedPrefix:
    """Requests that share ``n_prefixes`` system prompts (or, with ``shared=False``, do not)."""

    n_prefixes: int = 4
    prefix_tokens: int = 256
    suffix_tokens: int = 32
    output_tokens: int = 16
    shared: bool = True
    requests: int = 256
    """Distinct requests built when the run's request count is not known (cycled)."""
    seed: int = 0
    ignore_eos: bool = False
    extra_body: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.n_prefixes < 1 or self.prefix_tokens < 1 or self.suffix_tokens < 1:
            raise ValueError("SharedPrefix needs n_prefixes, prefix_tokens, suffix_tokens >= 1")

    def prepare(self, context: WorkloadContext) -> PreparedWorkload:
        """A system prompt and a question per request, of exact lengths in one-token words."""
        words = token_words(context.counter)
        count = check_count(context.count, self.requests)
        prefixes = [
            words.text(self.prefix_tokens, f"{self.seed}:prefix:{j}")
            for j in range(self.n_prefixes)
        ]
        extras = body_extras(self.ignore_eos, self.extra_body)
        tokens = self.prefix_tokens + self.suffix_tokens
        specs = []
        for i in range(count):
            prefix = (
                prefixes[i % self.n_prefixes]
                if self.shared
                else words.text(self.prefix_tokens, f"{self.seed}:own:{i}")
            )
            question = words.text(self.suffix_tokens, f"{self.seed}:question:{i}")
            prompt: Any = (
                [{"role": "system", "content": prefix}, {"role": "user", "content": question}]
                if context.endpoint == "chat"
                else prefix + question
            )
            specs.append(
                RequestSpec(
                    prompt,
                    self.output_tokens,
                    stream=context.stream,
                    extra_body=extras,
                    input_tokens=tokens,
                )
            )
        kind = f"{self.n_prefixes} shared" if self.shared else "unshared (one per request)"
        info = {
            "name": "shared-prefix",
            "shared": self.shared,
            "n_prefixes": self.n_prefixes if self.shared else count,
            "prefix_tokens": self.prefix_tokens,
            "suffix_tokens": self.suffix_tokens,
            "prompt_tokens": tokens,
            "output_tokens": self.output_tokens,
            "exact": words.exact,
            "source": words.source,
        }
        text = (
            f"shared prefix: {count} requests, {kind} prefixes of {self.prefix_tokens} tokens "
            f"+ {self.suffix_tokens}-token questions ({'exact' if words.exact else 'APPROXIMATE'},"
            f" {words.source}); {self.output_tokens} output tokens"
        )
        return PreparedWorkload(specs, info, text)


@WORKLOADS.register("embeddings")
@dataclass(frozen=True)
class Embeddings:
    """``/v1/embeddings`` requests of ``batch`` inputs each, ``input_tokens`` tokens per input,
    or the prompts of a dataset file (``path``, ``format`` as :class:`Dataset` reads them)."""

    batch: int = 8
    input_tokens: int = 32
    requests: int = 64
    """Distinct requests built when the run's request count is not known (cycled)."""
    seed: int = 0
    path: str | None = None
    format: str | None = None
    extra_body: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.batch < 1 or self.input_tokens < 1:
            raise ValueError("Embeddings needs batch >= 1 and input_tokens >= 1")

    def prepare(self, context: WorkloadContext) -> PreparedWorkload:
        """Batches of exact-length texts (or dataset prompts) for the embeddings endpoint."""
        count = check_count(context.count, self.requests)
        counter = context.counter
        if self.path is not None:
            from pytest_gpuinfer.load.workloads.dataset import load_rows

            rows = load_rows(self.path, self.format)
            texts = [row.user_text for row in rows if row.user_text]
            if not texts:
                raise ValueError(f"{self.path}: no prompt texts to embed")
            source = f"prompts of {self.path}"
            exact = False
        else:
            words = token_words(counter)
            needed = min(count * self.batch, max(self.batch, 1024))
            texts = [words.text(self.input_tokens, f"{self.seed}:embed:{i}") for i in range(needed)]
            source, exact = words.source, words.exact
        lengths: dict[str, int] = {}

        def counted(text: str) -> int:
            """Tokens of ``text``, each distinct text counted once."""
            if text not in lengths:
                lengths[text] = counter.count(text) if counter is not None else 0
            return lengths[text]

        specs = []
        for i in range(count):
            inputs = [texts[(i * self.batch + k) % len(texts)] for k in range(self.batch)]
            tokens: int | None = self.input_tokens * self.batch
            if self.path is not None:
                tokens = sum(counted(t) for t in inputs) if counter is not None else None
            specs.append(
                RequestSpec(
                    inputs, 0, stream=False, extra_body=self.extra_body, input_tokens=tokens
                )
            )
        info = {
            "name": "embeddings",
            "batch": self.batch,
            "input_tokens": self.input_tokens if self.path is None else None,
            "path": self.path,
            "exact": exact,
            "source": source,
        }
        what = f"{self.input_tokens}-token texts" if self.path is None else source
        text = f"embeddings: {count} requests of {self.batch} {what} ({source})"
        return PreparedWorkload(specs, info, text, endpoint="embeddings")
