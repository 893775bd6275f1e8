"""What every workload shares: the context it is built in, and what it hands the runner.

A workload is a small description (a dataclass) that :meth:`Workload.prepare` turns into a
:class:`PreparedWorkload` once the target is known: request specs (body, asked input and output
tokens) for single-turn workloads, or :class:`Session` s of turns for conversations. The runner
and the client never know where the requests came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pytest_gpuinfer.load.client import Endpoint, RequestSpec
from pytest_gpuinfer.load.prompts import TokenCounter
from pytest_gpuinfer.load.registry import Registry

History = Literal["response", "dataset"]


@dataclass(frozen=True)
class WorkloadContext:
    """What a workload needs to know to build its requests."""

    counter: TokenCounter | None
    """Counts tokens as the target does (None: lengths are approximate)."""
    endpoint: Endpoint
    """The endpoint the runner sends to (chat or completions)."""
    stream: bool = True
    count: int | None = None
    """Requests the run will send, when known (a workload builds at most this many)."""
    first_item: int = 0
    """Index of the first item the run takes (a trace window's first row)."""


@dataclass(frozen=True)
class Turn:
    """One user turn of a conversation, with the reply length asked for."""

    message: str
    output_tokens: int
    input_tokens: int | None = None
    """Tokens of this turn's message alone."""
    reply: str | None = None
    """The recorded reply (used as history when the conversation carries the dataset's)."""


@dataclass(frozen=True)
class Session:
    """A conversation: its turns in order, and an optional system prompt."""

    index: int
    turns: tuple[Turn, ...]
    system: str | None = None


@dataclass
class PreparedWorkload:
    """Requests ready to send: specs cycled over the run, or conversations."""

    specs: list[RequestSpec]
    info: dict[str, Any]
    """Plain-JSON description for the run's config."""
    text: str
    """One line for people: what is sent and how its lengths were counted."""
    finite: bool = False
    """True when the workload has a natural end: each item once (dataset, trace, sessions)."""
    endpoint: Endpoint | None = None
    """The endpoint these requests need when it is not the runner's (embeddings)."""
    sessions: list[Session] = field(default_factory=list)
    think_s: float = 0.0
    history: History = "response"
    extra_body: dict[str, Any] | None = None
    """Extra body of each conversation turn (specs carry their own)."""

    @property
    def size(self) -> int:
        """Requests the workload holds: specs, or the turns of every session."""
        if self.sessions:
            return sum(len(s.turns) for s in self.sessions)
        return len(self.specs)

    def check_spec(self, stream: bool) -> RequestSpec:
        """A short request shaped like this workload's (same endpoint, streaming and extra
        body) but sharing no prompt with it, for the unrecorded check before a run: a check
        that sent the first prompt would put it in the engine's prefix cache."""
        first = self.specs[0] if self.specs else None
        if first is not None and first.inputs is not None:
            return RequestSpec(["hello"], 0, stream=False, extra_body=first.extra_body)
        extra = first.extra_body if first is not None else self.extra_body
        return RequestSpec("hello", 2, stream=stream, extra_body=extra)


class Workload(Protocol):
    """A description of what to send, turned into requests once the target is known."""

    def prepare(self, context: WorkloadContext) -> PreparedWorkload:
        """Build the requests for ``context``."""
        ...


WORKLOADS: Registry[Any] = Registry("workload")
"""Workload classes by name, for the command line, the locustfile and options."""


def body_extras(ignore_eos: bool, extra_body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The extra fields of each request body (``ignore_eos`` included when asked)."""
    extras = dict(extra_body or {})
    if ignore_eos:
        extras["ignore_eos"] = True
    return extras or None


def check_count(count: int | None, default: int) -> int:
    """How many items to build: the run's request count when known, else ``default``."""
    chosen = default if count is None else count
    if chosen < 1:
        raise ValueError(f"a workload needs at least one request, not {chosen}")
    return chosen
