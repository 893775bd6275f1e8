"""Workloads of exact lengths: prompts of N tokens of the target's own tokenizer, fixed outputs.

A prompt length asked in tokens means that many tokens of the *target's* tokenizer, counted on the
prompt text alone (no special tokens), before any chat template. The template's own tokens (role
markers, BOS, the assistant prefix) are measured separately and reported as
``template_overhead_tokens``, so "128 tokens" means the same thing here as ``vllm bench serve
--random-input-len 128`` (which counts the same way) and the same between models.

Counting goes through the server's ``POST /tokenize`` (vLLM, SGLang) when it has one, else through
the model's ``tokenizer.json`` when the files are at hand. Without either, prompts are built from
words and labelled approximate.

Prompts are varied by default (a different three-word opening each), so an engine's prefix cache
does not turn a load test into a cache benchmark; ``varied=False`` repeats one prompt.

Text of any exact length from words that are one token each (:func:`token_words`): a sequence
of such words is exactly as many tokens as words, and equal word sequences are equal token
prefixes, which is how shared prefixes and a trace's ``hash_ids`` blocks are built.

Output lengths: ``ignore_eos`` makes vLLM generate exactly ``max_tokens``;
:func:`supports_ignore_eos` asks the server whether it honours it;
:mod:`pytest_gpuinfer.metrics.workload` reports the achieved lengths beside the asked ones.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, overload

__all__ = [
    "LocalTokenizer",
    "PromptLengthError",
    "PromptSet",
    "ServerTokenizer",
    "TokenCounter",
    "TokenWords",
    "WordCounter",
    "build_prompts",
    "exact_length_prompt",
    "supports_ignore_eos",
    "synthetic_prompt",
    "token_counter_for",
    "token_words",
]

FILLER_WORDS = (" the", " a", " and", " of", " is", " x", " 1")
"""Words tried, in order, as the repeated filler; the first that is one token per repeat wins."""
OPENING_WORDS = tuple(
    " " + word
    for word in [
        "in",
        "on",
        "it",
        "she",
        "over",
        "of",
        "is",
        "and",
        "a",
        "the",
        "1",
        "cat",
        "sun",
        "red",
        "one",
        "we",
        "he",
        "be",
        "at",
        "to",
        "dog",
        "fox",
        "time",
        "day",
        "way",
        "man",
        "world",
        "life",
        "hand",
        "part",
        "place",
        "case",
        "week",
        "point",
        "number",
        "group",
        "fact",
    ]
)
"""Candidates for the varied openings; only those that are one token for the target are used."""
_PROMPT_WORDS = (
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven"),
    *("old", "sailors", "sing", "about", "distant", "harbours", "and", "bright", "lanterns"),
    *("in", "the", "cold", "night"),
)
_HTTP_TIMEOUT_S = 30.0


class PromptLengthError(RuntimeError):
    """No prompt of the asked length could be built (the message says what was tried)."""


class TokenCounter(Protocol):
    """Counts tokens the way the target does."""

    source: str
    """Where the counts come from, for reports (e.g. ``server /tokenize``)."""

    def count(self, text: str) -> int:
        """Tokens of ``text`` alone, without special tokens."""
        ...

    def count_chat(self, text: str) -> int | None:
        """Tokens of a one-message chat after the chat template (None when unknown)."""
        ...

    def count_completion(self, text: str) -> int:
        """Tokens of ``text`` as a completions prompt (special tokens such as BOS included)."""
        ...


def synthetic_prompt(words: int) -> str:
    """A prompt of ``words`` common words (an approximation: about one token each, often more)."""
    return " ".join(_PROMPT_WORDS[i % len(_PROMPT_WORDS)] for i in range(max(1, words)))


def exact_length_prompt(
    count: Callable[[str], int],
    target: int,
    *,
    words: Sequence[str] = FILLER_WORDS,
    prefix: str = "",
) -> str:
    """A prompt ``count`` says is ``target`` tokens long: ``prefix``, then one word repeated."""
    # ``count`` gives the token count as the caller wants it counted; a word qualifies when each
    # repetition adds exactly one token, and the final prompt is re-counted and adjusted.
    tried: list[str] = []
    for word in words:
        head = prefix + word if prefix else word.strip()
        base = count(head)
        if count(head + word * 3) - base != 3:
            tried.append(f"{word!r} is not one token per repetition")
            continue
        repeats = target - base
        if repeats < 0:
            raise PromptLengthError(
                f"a {target}-token prompt is shorter than its opening {head!r} alone"
            )
        got = base
        for _ in range(3):
            text = head + word * repeats
            got = count(text)
            if got == target:
                return text
            repeats += target - got
            if repeats < 0:
                break
        tried.append(f"{word!r} repeated gives {got} tokens, not {target}")
    raise PromptLengthError(
        f"could not build a prompt of exactly {target} tokens: {'; '.join(tried)}"
    )


class ServerTokenizer:
    """Counts tokens through the server's ``POST /tokenize`` (vLLM's route)."""

    def __init__(self, base_url: str, model: str, *, headers: dict[str, str] | None = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.source = f"server {self.base_url}/tokenize"

    def _tokens(self, body: dict[str, Any]) -> int:
        """POST ``body`` to /tokenize and return the token count it answers."""
        request = urllib.request.Request(
            f"{self.base_url}/tokenize",
            data=json.dumps({"model": self.model, **body}).encode(),
            headers=self.headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise PromptLengthError(f"POST /tokenize answered {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise PromptLengthError(f"POST /tokenize failed: {exc}") from None
        if isinstance(answer, dict) and isinstance(answer.get("count"), int):
            return int(answer["count"])
        if isinstance(answer, dict) and isinstance(answer.get("tokens"), list):
            return len(answer["tokens"])
        raise PromptLengthError(f"POST /tokenize answered without tokens: {str(answer)[:200]}")

    def available(self) -> bool:
        """True when the server answers /tokenize."""
        try:
            self.count("hello")
        except PromptLengthError:
            return False
        return True

    def count(self, text: str) -> int:
        """Tokens of ``text`` alone (``add_special_tokens`` false)."""
        return self._tokens({"prompt": text, "add_special_tokens": False})

    def count_completion(self, text: str) -> int:
        """Tokens of ``text`` as the completions endpoint sees it."""
        return self._tokens({"prompt": text, "add_special_tokens": True})

    def count_chat(self, text: str) -> int | None:
        """Tokens of a one-message chat after the server's chat template."""
        try:
            return self._tokens(
                {"messages": [{"role": "user", "content": text}], "add_generation_prompt": True}
            )
        except PromptLengthError:
            return None


class LocalTokenizer:
    """Counts tokens with the model's own ``tokenizer.json`` (and chat template, when present)."""

    def __init__(self, model_dir: str | Path):
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        path = self.model_dir / "tokenizer.json"
        if not path.is_file():
            raise PromptLengthError(f"no tokenizer.json in {self.model_dir}")
        self._tokenizer = Tokenizer.from_file(str(path))
        self._chat: Any = None
        self.source = f"local tokenizer {path}"

    def count(self, text: str) -> int:
        """Tokens of ``text`` alone."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_completion(self, text: str) -> int:
        """Tokens of ``text`` with the tokenizer's special tokens (BOS)."""
        return len(self._tokenizer.encode(text, add_special_tokens=True).ids)

    def count_chat(self, text: str) -> int | None:
        """Tokens after the model's chat template (transformers), None without one."""
        try:
            if self._chat is None:
                from transformers import AutoTokenizer

                self._chat = AutoTokenizer.from_pretrained(str(self.model_dir))
            ids = self._chat.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
        except (ImportError, ValueError, OSError):
            return None
        if hasattr(ids, "keys"):  # transformers >= 5 answers a BatchEncoding
            ids = ids["input_ids"]
        return len(ids)


def token_counter_for(
    base_url: str | None,
    model: str | None,
    *,
    model_dir: str | Path | None = None,
    headers: dict[str, str] | None = None,
) -> TokenCounter | None:
    """The best counter at hand: the server's /tokenize, else the local tokenizer, else None."""
    if base_url and model:
        server = ServerTokenizer(base_url, model, headers=headers)
        if server.available():
            return server
    if model_dir is not None and (Path(model_dir) / "tokenizer.json").is_file():
        return LocalTokenizer(model_dir)
    return None


@dataclass
class PromptSet(Sequence[str]):
    """Prompts of one asked length, with how they were counted and what the template adds."""

    prompts: list[str]
    tokens: int
    """The asked length, in the target's tokens, before the chat template."""
    measured: list[int]
    """Each prompt's counted length (equal to ``tokens`` unless ``exact`` is false)."""
    source: str
    exact: bool
    endpoint: str = "chat"
    template_overhead_tokens: int | None = None
    """Tokens the chat template (or BOS on completions) adds per request, when known."""
    notes: list[str] = field(default_factory=list)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        """The prompt(s) at ``index``."""
        return self.prompts[index]

    def __len__(self) -> int:
        """Number of prompts."""
        return len(self.prompts)

    def __iter__(self) -> Iterator[str]:
        """The prompts in order."""
        return iter(self.prompts)

    @property
    def sent_tokens(self) -> int | None:
        """Prompt tokens the server will see per request (content plus template), when known."""
        if self.template_overhead_tokens is None:
            return None
        return self.tokens + self.template_overhead_tokens

    def describe(self) -> str:
        """One line: length, how counted, template overhead."""
        how = "exact" if self.exact else "APPROXIMATE"
        overhead = (
            f"; the {'chat template adds' if self.endpoint == 'chat' else 'special tokens add'} "
            f"{self.template_overhead_tokens} -> {self.sent_tokens} sent"
            if self.template_overhead_tokens is not None
            else "; template overhead unknown"
        )
        return (
            f"prompts: {len(self.prompts)} x {self.tokens} tokens ({how}, counted by "
            f"{self.source}){overhead}" + "".join(f"; {note}" for note in self.notes)
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description (without the prompt texts)."""
        return {
            "prompt_tokens": self.tokens,
            "prompts": len(self.prompts),
            "exact": self.exact,
            "source": self.source,
            "endpoint": self.endpoint,
            "template_overhead_tokens": self.template_overhead_tokens,
            "sent_prompt_tokens": self.sent_tokens,
            "notes": list(self.notes),
        }


def _openings(counter: Callable[[str], int], count: int, seed: int) -> list[str]:
    """``count`` distinct three-word openings made of words that are one token for the target."""
    singles = [w for w in OPENING_WORDS if counter(w) == 1]
    if len(singles) < 3:
        return [""] * count
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()
    out: list[str] = []
    limit = len(singles) ** 3
    while len(out) < count:
        combo = tuple(rng.choice(singles) for _ in range(3))
        if combo in seen and len(seen) < limit:
            continue
        seen.add(combo)
        out.append(combo[0].strip() + "".join(combo[1:]))
    return out


def build_prompts(
    counter: TokenCounter | None,
    tokens: int,
    *,
    count: int = 1,
    varied: bool = True,
    seed: int = 0,
    endpoint: str = "chat",
) -> PromptSet:
    """``count`` prompts of exactly ``tokens`` target tokens (approximate without a counter)."""
    if tokens < 1:
        raise ValueError(f"a prompt needs at least 1 token, not {tokens}")
    if count < 1:
        raise ValueError(f"count must be >= 1, not {count}")
    if counter is None:
        text = synthetic_prompt(tokens)
        return PromptSet(
            [text] * count,
            tokens,
            [tokens] * count,
            source="words (no tokenizer at hand: about one token per word)",
            exact=False,
            endpoint=endpoint,
        )
    cache: dict[str, int] = {}

    def counted(text: str) -> int:
        if text not in cache:
            cache[text] = counter.count(text)
        return cache[text]

    notes: list[str] = []
    openings = _openings(counted, count if varied else 1, seed)
    prompts: list[str] = []
    for opening in openings:
        try:
            prompts.append(exact_length_prompt(counted, tokens, prefix=opening))
        except PromptLengthError:
            if not opening:
                raise
            note = f"some prompts could not take a varied opening at {tokens} tokens"
            if note not in notes:
                notes.append(note)
            prompts.append(exact_length_prompt(counted, tokens))
    if not varied:
        prompts = prompts * count
    elif openings == [""] * count:
        notes.append("no one-token opening words: the prompts are identical")
    sample = prompts[0]
    if endpoint == "chat":
        chat = counter.count_chat(sample)
        overhead = None if chat is None else chat - tokens
    else:
        overhead = counter.count_completion(sample) - tokens
    return PromptSet(
        prompts,
        tokens,
        [counted(p) for p in prompts],
        source=counter.source,
        exact=True,
        endpoint=endpoint,
        template_overhead_tokens=overhead,
        notes=notes,
    )


def supports_ignore_eos(
    base_url: str, model: str, *, headers: dict[str, str] | None = None, tokens: int = 8
) -> bool:
    """True when the server accepts ``ignore_eos`` and returns exactly ``tokens`` tokens with it."""
    body = {
        "model": model,
        "prompt": "hello",
        "max_tokens": tokens,
        "ignore_eos": True,
    }
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_S) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError):
        return False
    usage = answer.get("usage") if isinstance(answer, dict) else None
    return isinstance(usage, dict) and usage.get("completion_tokens") == tokens


class WordCounter:
    """Counts one token per whitespace-separated word: the simulator's own rule, for runs
    against it (a real engine's counts come from :class:`ServerTokenizer`)."""

    source = "words (one token per word, the simulator's rule)"

    def count(self, text: str) -> int:
        """Words in ``text``."""
        return len(text.split())

    def count_chat(self, text: str) -> int | None:
        """Unknown: the chat template is the server's."""
        return None

    def count_completion(self, text: str) -> int:
        """Words in ``text``."""
        return len(text.split())


@dataclass(frozen=True)
class TokenWords:
    """Words (each with its leading space) that are one token each for the target."""

    words: tuple[str, ...]
    exact: bool
    """True when a counter confirmed each word is one token and they add up."""
    source: str

    def text(self, tokens: int, seed: int | str) -> str:
        """``tokens`` words drawn by ``seed``; a shorter text of a seed is a prefix of a longer
        one, so equal seeds give equal token prefixes."""
        if tokens <= 0:
            return ""
        rng = random.Random(seed)
        words = self.words
        n = len(words)
        return "".join([words[int(rng.random() * n)] for _ in range(tokens)])


def token_words(counter: TokenCounter | None, *, minimum: int = 3) -> TokenWords:
    """The words of :data:`OPENING_WORDS` and :data:`FILLER_WORDS` that are one token each for
    ``counter`` and stay so when repeated and mixed (approximate without a counter)."""
    candidates = list(dict.fromkeys((*FILLER_WORDS, *OPENING_WORDS)))
    if counter is None:
        return TokenWords(
            tuple(candidates), False, "words (no tokenizer at hand: about one token per word)"
        )
    singles = [w for w in candidates if counter.count(w) == 1 and counter.count(w * 3) == 3]
    if len(singles) < minimum:
        raise PromptLengthError(
            f"fewer than {minimum} one-token words for {counter.source}: {singles}"
        )
    probe = "".join(singles) * 2
    if counter.count(probe) != len(singles) * 2:
        raise PromptLengthError(
            f"one-token words do not add up when mixed for {counter.source}: "
            f"{counter.count(probe)} tokens for {len(singles) * 2} words"
        )
    return TokenWords(tuple(singles), True, counter.source)
