"""Dataset files: ShareGPT JSON, JSONL, OpenAI chat JSONL and Hugging Face datasets on disk.

Every format comes down to rows of chat turns (:class:`DatasetRow`): an optional system prompt,
then (user message, recorded reply) pairs, and optionally an explicit output length. The row
shapes read, whatever the file format:

* ShareGPT: ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}, ...]}``
  (``human``/``user``, ``gpt``/``assistant``/``chatgpt``/``bard``, ``system``);
* OpenAI chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``
  (content as a string or a list of ``{"type": "text", "text": ...}`` parts);
* prompt rows: ``{"prompt": ..., "completion"|"response"|"output": ...}``;

each optionally with ``"output_tokens"`` (or ``"max_tokens"``, ``"output_len"``): the output
length to ask for instead of the recorded reply's. Files: ``sharegpt`` (a JSON array),
``jsonl`` (one row per line, any row shape), ``openai-chat`` (JSONL whose rows have
``messages``), ``hf-disk`` (a directory written by ``datasets.Dataset.save_to_disk``; needs the
``datasets`` package, the ``train`` split of a ``DatasetDict`` or its first). The format is
guessed from the path when not given: a directory is ``hf-disk``, ``.json`` is ``sharegpt``,
anything else ``jsonl``.

:class:`Dataset` sends one request per row: the first user turn (after the system prompt) as
the prompt, and the row's output length (or the recorded reply's, in target tokens) as
``max_tokens``; with ``ignore_eos`` each request produces exactly that many. Rows are drawn in a
seeded random order. Files are parsed with orjson (the client's JSON parser; on a 111 MB
ShareGPT-shaped file it and the standard library's both read about 300 MB/s here, see
docs/workloads.md) and the rows kept in memory per path and modification time, so repeated runs
do not parse again.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from pytest_gpuinfer.load.client import RequestSpec
from pytest_gpuinfer.load.prompts import TokenCounter
from pytest_gpuinfer.load.workloads.base import (
    WORKLOADS,
    PreparedWorkload,
    WorkloadContext,
    body_extras,
)

DatasetFormat = Literal["sharegpt", "jsonl", "openai-chat", "hf-disk"]
DATASET_FORMATS: tuple[DatasetFormat, ...] = ("sharegpt", "jsonl", "openai-chat", "hf-disk")

_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
_OUTPUT_KEYS = ("output_tokens", "max_tokens", "output_len")
_REPLY_KEYS = ("completion", "response", "output")
_CACHE: dict[tuple[str, str, int, int], list[DatasetRow]] = {}


class DatasetError(ValueError):
    """A dataset file that cannot be read as asked (the message names the file and the row)."""


@dataclass(frozen=True, slots=True)
class DatasetRow:
    """One dataset row: system prompt, (user, reply) turns, explicit output length."""

    system: str | None
    turns: tuple[tuple[str, str | None], ...]
    output_tokens: int | None = None

    @property
    def user_text(self) -> str:
        """The first user message."""
        return self.turns[0][0] if self.turns else ""


def guess_format(path: Path) -> DatasetFormat:
    """The format a path most likely holds."""
    if path.is_dir():
        return "hf-disk"
    return "sharegpt" if path.suffix.lower() == ".json" else "jsonl"


def load_rows(path: str | os.PathLike[str], format: str | None = None) -> list[DatasetRow]:
    """Every usable row of a dataset file (cached per path, size and modification time)."""
    file = Path(path)
    if not file.exists():
        raise DatasetError(f"dataset {file}: no such file or directory")
    chosen = format or guess_format(file)
    if chosen not in DATASET_FORMATS:
        known = ", ".join(DATASET_FORMATS)
        raise DatasetError(f"dataset {file}: format {chosen!r} unknown; known: {known}")
    stat = file.stat()
    key = (str(file.resolve()), chosen, stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE.clear()  # one dataset at a time: a big file is not kept twice
        _CACHE[key] = list(_read(file, chosen))
        if not _CACHE[key]:
            raise DatasetError(f"dataset {file} ({chosen}): no row with a user message")
    return _CACHE[key]


def _read(file: Path, format: str) -> Iterable[DatasetRow]:
    """Rows of ``file`` in ``format``; rows without a user message are left out."""
    if format == "sharegpt":
        try:
            data = orjson.loads(file.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise DatasetError(f"dataset {file} is not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise DatasetError(f"dataset {file} (sharegpt): expected a JSON array of rows")
        for number, item in enumerate(data):
            row = parse_row(item, f"{file} row {number}", require="conversations")
            if row is not None:
                yield row
    elif format == "hf-disk":
        for number, item in enumerate(_hf_rows(file)):
            row = parse_row(item, f"{file} row {number}")
            if row is not None:
                yield row
    else:
        require = "messages" if format == "openai-chat" else None
        with file.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise DatasetError(f"dataset {file} line {number}: not JSON: {exc}") from None
                row = parse_row(item, f"{file} line {number}", require=require)
                if row is not None:
                    yield row


def _hf_rows(directory: Path) -> Iterable[Mapping[str, Any]]:
    """Rows of a dataset saved with ``save_to_disk`` (through the ``datasets`` package)."""
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            f"dataset {directory} (hf-disk) needs the 'datasets' package: "
            "pip install 'pytest-gpuinfer[datasets]'"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(directory))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DatasetError(f"dataset {directory} (hf-disk): {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        loaded = loaded[split]
    rows: Iterable[Mapping[str, Any]] = loaded
    return rows


def _content(value: Any) -> str:
    """Message content as text (a list of parts is joined by its text parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part) for part in value
        )
    return "" if value is None else str(value)


@dataclass(frozen=True)
class _TurnList:
    """A row key holding a list of turns, and the keys its turns keep role and text under
    (the first present one wins)."""

    key: str
    turn: str
    """What one turn is called in errors."""
    role_keys: tuple[str, ...]
    text_keys: tuple[str, ...]


_TURN_LISTS = (
    _TurnList("conversations", "a conversation turn", ("from", "role"), ("value", "content")),
    _TurnList("messages", "a message", ("role",), ("content",)),
)
"""ShareGPT's conversations (its from/value, or role/content) and OpenAI-style messages."""


def _first_present(turn: Mapping[str, Any], keys: tuple[str, ...], default: Any) -> Any:
    """The value under the first of ``keys`` the turn has, else ``default``."""
    return next((turn[key] for key in keys if key in turn), default)


def _messages(item: Mapping[str, Any], where: str) -> list[tuple[str, str]] | None:
    """(role, text) pairs of a row in any of the shapes read."""
    for shape in _TURN_LISTS:
        if shape.key not in item:
            continue
        turns = item[shape.key]
        if not isinstance(turns, list):
            raise DatasetError(f"{where}: {shape.key!r} is not a list")
        out = []
        for turn in turns:
            if not isinstance(turn, Mapping):
                raise DatasetError(f"{where}: {shape.turn} is not an object")
            role = _ROLES.get(str(_first_present(turn, shape.role_keys, "")).lower())
            if role is not None:
                out.append((role, _content(_first_present(turn, shape.text_keys, None))))
        return out
    if "prompt" in item:
        reply = next((item[k] for k in _REPLY_KEYS if isinstance(item.get(k), str)), None)
        pairs = [("user", _content(item["prompt"]))]
        if reply is not None:
            pairs.append(("assistant", reply))
        return pairs
    return None


def parse_row(item: Any, where: str, *, require: str | None = None) -> DatasetRow | None:
    """A row from one JSON object (None when it holds no user message)."""
    if not isinstance(item, Mapping):
        raise DatasetError(f"{where}: a row must be a JSON object, not {type(item).__name__}")
    if require is not None and require not in item:
        raise DatasetError(f"{where}: no {require!r} key (keys: {sorted(item)[:8]})")
    messages = _messages(item, where)
    if messages is None:
        raise DatasetError(
            f"{where}: no 'conversations', 'messages' or 'prompt' key (keys: {sorted(item)[:8]})"
        )
    system = None
    turns: list[tuple[str, str | None]] = []
    for role, text in messages:
        if role == "system" and not turns:
            system = text if system is None else system + "\n" + text
        elif role == "user":
            if turns and turns[-1][1] is None:  # two user messages in a row: one turn
                turns[-1] = (turns[-1][0] + "\n" + text, None)
            else:
                turns.append((text, None))
        elif role == "assistant" and turns and turns[-1][1] is None:
            turns[-1] = (turns[-1][0], text)
    if not turns or not turns[0][0].strip():
        return None
    explicit = next((item[k] for k in _OUTPUT_KEYS if item.get(k) is not None), None)
    if explicit is not None:
        try:
            explicit = int(explicit)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: output length {explicit!r} is not a number") from None
        if explicit < 1:
            raise DatasetError(f"{where}: output length {explicit} is not >= 1")
    return DatasetRow(system, tuple(turns), explicit)


def count_tokens(counter: TokenCounter | None, text: str) -> int:
    """Tokens of ``text`` for the target (words without a counter)."""
    return counter.count(text) if counter is not None else len(text.split())


@WORKLOADS.register("dataset")
@dataclass(frozen=True)
class Dataset:
    """One request per dataset row: its first user turn, and its own output length."""

    path: str
    format: str | None = None
    sample: int | None = None
    """Rows to draw (in a seeded random order); None: as many as the run sends, all at most."""
    seed: int = 0
    ignore_eos: bool = False
    output_tokens: int | None = None
    """Ask every request for this many tokens instead of the row's own length."""
    max_input_tokens: int | None = None
    """Rows whose prompt is longer are skipped (a model's context)."""
    max_total_tokens: int | None = None
    """Rows whose prompt plus output is longer are skipped."""
    min_output_tokens: int = 1
    extra_body: dict[str, Any] | None = None

    def prepare(self, context: WorkloadContext) -> PreparedWorkload:
        """Draw rows, count their lengths with the target's tokenizer, build the requests."""
        rows = load_rows(self.path, self.format)
        want = self.sample or context.count or len(rows)
        want = min(want, len(rows))
        order = list(range(len(rows)))
        random.Random(self.seed).shuffle(order)
        counter = context.counter
        extras = body_extras(self.ignore_eos, self.extra_body)
        specs: list[RequestSpec] = []
        skipped = 0
        for index in order:
            if len(specs) >= want:
                break
            row = rows[index]
            user, reply = row.turns[0]
            input_tokens = count_tokens(counter, user)
            if row.system:
                input_tokens += count_tokens(counter, row.system)
            output = self.output_tokens or row.output_tokens
            if output is None and reply is not None:
                output = count_tokens(counter, reply)
            if (
                output is None
                or output < self.min_output_tokens
                or (self.max_input_tokens is not None and input_tokens > self.max_input_tokens)
                or (
                    self.max_total_tokens is not None
                    and input_tokens + output > self.max_total_tokens
                )
            ):
                skipped += 1
                continue
            prompt: Any = user
            if context.endpoint == "chat" and row.system:
                prompt = [
                    {"role": "system", "content": row.system},
                    {"role": "user", "content": user},
                ]
            elif row.system:
                prompt = row.system + "\n" + user
            specs.append(
                RequestSpec(
                    prompt,
                    output,
                    stream=context.stream,
                    extra_body=extras,
                    input_tokens=input_tokens,
                )
            )
        if not specs:
            raise DatasetError(
                f"dataset {self.path}: none of {len(rows)} rows fits "
                f"(no output length, or over max_input_tokens/max_total_tokens)"
            )
        how = counter.source if counter is not None else "words (APPROXIMATE: no tokenizer)"
        info = {
            "name": "dataset",
            "path": str(self.path),
            "format": self.format or guess_format(Path(self.path)),
            "rows": len(rows),
            "sampled": len(specs),
            "skipped": skipped,
            "seed": self.seed,
            "ignore_eos": self.ignore_eos,
            "source": how,
        }
        text = (
            f"dataset {self.path} ({info['format']}): {len(specs)} of {len(rows)} rows "
            f"(seed {self.seed}, {skipped} skipped), lengths counted by {how}"
            + (
                "; ignore_eos: each request produces its row's output length"
                if self.ignore_eos
                else ""
            )
        )
        return PreparedWorkload(specs, info, text, finite=True)
