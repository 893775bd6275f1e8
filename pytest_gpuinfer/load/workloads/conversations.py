"""Multi-turn conversations: many sessions at once, history carried into each turn, think time.

Each session is a run of turns sent one after another: turn ``k`` carries the system prompt, every
earlier user message and reply, then its own user message, so the context grows with each turn
(and an engine's prefix cache can reuse the earlier turns). The reply carried is the server's own
answer (``history="response"``, the default) or the dataset's recorded one
(``history="dataset"``, which keeps every prompt the same from run to run). After a turn ends the
session waits ``think_s`` seconds (a user reading and typing) before the next.

Sessions come from a dataset file (ShareGPT conversations, or OpenAI chat rows with several
turns; see :mod:`pytest_gpuinfer.load.workloads.dataset`) or are synthetic: ``turns`` turns of
``input_tokens``-token messages asking for ``output_tokens`` each. The schedule starts sessions
(a closed loop of ``concurrency`` keeps that many sessions going; an open loop starts one per
arrival); a run's request cap counts turns, and the last session is cut to fit it exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from pytest_gpuinfer.load.prompts import token_words
from pytest_gpuinfer.load.workloads.base import (
    WORKLOADS,
    History,
    PreparedWorkload,
    Session,
    Turn,
    WorkloadContext,
    body_extras,
)
from pytest_gpuinfer.load.workloads.dataset import count_tokens, load_rows


@WORKLOADS.register("conversations")
@dataclass(frozen=True)
class Conversations:
    """Sessions of turns from a dataset file (``path``) or synthetic ones."""

    path: str | None = None
    format: str | None = None
    sessions: int | None = None
    """Sessions to run (dataset: drawn with ``seed``; None: as many as the request cap takes,
    all at most); synthetic: 16 when None."""
    turns: int | None = None
    """Synthetic: turns per session (4 when None); dataset: at most this many per session."""
    input_tokens: int = 32
    """Synthetic: tokens of each user message."""
    output_tokens: int | None = None
    """Tokens each reply asks for (synthetic: 32 when None; dataset: the recorded reply's)."""
    system_tokens: int = 0
    """Synthetic: a system prompt of this many tokens per session (0: none)."""
    think_s: float = 0.0
    history: History = "response"
    max_context_tokens: int | None = None
    """Turns whose context (all messages so far plus the reply) would pass this are dropped."""
    seed: int = 0
    ignore_eos: bool = False
    extra_body: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.history not in ("response", "dataset"):
            raise ValueError(f"history must be 'response' or 'dataset', not {self.history!r}")
        if self.think_s < 0:
            raise ValueError(f"think_s must be >= 0, not {self.think_s}")
        if self.turns is not None and self.turns < 1:
            raise ValueError(f"turns must be >= 1, not {self.turns}")
        if self.path is None and self.history == "dataset":
            raise ValueError("history='dataset' needs a dataset file (path=...)")

    def prepare(self, context: WorkloadContext) -> PreparedWorkload:
        """Build the sessions, cut to the run's request count."""
        if context.endpoint != "chat":
            raise ValueError("conversations need the chat endpoint (history is chat messages)")
        sessions = self._from_file(context) if self.path else self._synthetic(context)
        sessions = _fit(sessions, context.count)
        if not sessions:
            raise ValueError(f"conversations {self.path or '(synthetic)'}: no session to run")
        turns = [len(s.turns) for s in sessions]
        source = self.path or "synthetic"
        info = {
            "name": "conversations",
            "path": self.path,
            "sessions": len(sessions),
            "turns": sum(turns),
            "max_turns": max(turns),
            "think_s": self.think_s,
            "history": self.history,
            "seed": self.seed,
            "ignore_eos": self.ignore_eos,
            "source": context.counter.source if context.counter is not None else "words",
        }
        text = (
            f"conversations ({source}): {len(sessions)} sessions, {sum(turns)} turns "
            f"(up to {max(turns)} per session), think time {self.think_s:g} s, history from the "
            f"{'server replies' if self.history == 'response' else 'dataset replies'}"
        )
        return PreparedWorkload(
            [],
            info,
            text,
            finite=True,
            sessions=sessions,
            think_s=self.think_s,
            history=self.history,
            extra_body=body_extras(self.ignore_eos, self.extra_body),
        )

    def _synthetic(self, context: WorkloadContext) -> list[Session]:
        """Sessions of exact-length messages in one-token words."""
        words = token_words(context.counter)
        turns = self.turns or 4
        count = self.sessions or 16
        output = self.output_tokens or 32
        out = []
        for s in range(count):
            system = (
                words.text(self.system_tokens, f"{self.seed}:system:{s}")
                if self.system_tokens
                else None
            )
            session_turns = tuple(
                Turn(
                    words.text(self.input_tokens, f"{self.seed}:turn:{s}:{t}"),
                    output,
                    self.input_tokens,
                )
                for t in range(turns)
            )
            out.append(Session(s, self._within_context(session_turns, system), system))
        return out

    def _from_file(self, context: WorkloadContext) -> list[Session]:
        """Sessions from the file's rows, drawn in a seeded order, lengths counted."""
        assert self.path is not None
        rows = load_rows(self.path, self.format)
        order = list(range(len(rows)))
        random.Random(self.seed).shuffle(order)
        counter = context.counter
        wanted = self.sessions or len(rows)
        budget = context.count
        out: list[Session] = []
        planned = 0
        for index in order:
            if len(out) >= wanted or (budget is not None and planned >= budget):
                break
            row = rows[index]
            turns = []
            for user, reply in row.turns[: self.turns]:
                if self.output_tokens is not None:
                    output = self.output_tokens
                elif reply is not None:
                    output = count_tokens(counter, reply)
                else:
                    break
                if output < 1:
                    break
                turns.append(Turn(user, output, count_tokens(counter, user), reply))
            kept = self._within_context(tuple(turns), row.system, counter)
            if kept:
                out.append(Session(len(out), kept, row.system))
                planned += len(kept)
        return out

    def _within_context(
        self, turns: tuple[Turn, ...], system: str | None, counter: Any = None
    ) -> tuple[Turn, ...]:
        """The leading turns whose growing context stays within ``max_context_tokens``."""
        limit = self.max_context_tokens
        if limit is None:
            return turns
        used = count_tokens(counter, system) if system else 0
        kept = []
        for turn in turns:
            used += (turn.input_tokens or 0) + turn.output_tokens
            if used > limit:
                break
            kept.append(turn)
        return tuple(kept)


def _fit(sessions: list[Session], requests: int | None) -> list[Session]:
    """The sessions whose turns fit in ``requests`` (the last one cut to fit exactly)."""
    if requests is None:
        return sessions
    out = []
    left = requests
    for session in sessions:
        if left <= 0:
            break
        if len(session.turns) > left:
            session = Session(session.index, session.turns[:left], session.system)
        out.append(session)
        left -= len(session.turns)
    return out
