"""Per-request timing records: the one data shape the load engine produces and metrics consume.

All times are ``time.perf_counter()`` seconds. On Linux that is CLOCK_MONOTONIC, which is shared by
every process on the machine, so records from several client processes and the simulator's
server-side timestamps can be compared directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    """What happened to one request, as seen by the client."""

    index: int
    scheduled: float
    """When the request was due: its arrival time (open loop) or when a slot freed (closed loop)."""
    sent: float | None = None
    """When the request's bytes were handed to the socket (stamped just before the write)."""
    first_byte: float | None = None
    """When the first byte of the response arrived."""
    first_token: float | None = None
    """When the first chunk carrying generated text arrived."""
    end: float | None = None
    """When the last chunk (or the whole non-streamed body) arrived, or when the request failed."""
    chunk_times: list[float] = field(default_factory=list)
    """Arrival time of every chunk that carried generated text."""
    chunk_tokens: list[int] = field(default_factory=list)
    """Tokens carried by each of those chunks (same length as ``chunk_times``)."""
    status: int | None = None
    """HTTP status, or None when no response head arrived."""
    error: str | None = None
    """Error class when the request failed: 'connect', 'timeout', 'http', 'stream', 'server'
    (an error reported inside a 200 response), 'disconnect'."""
    error_message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    """Server ``usage`` when given, else the sum of ``chunk_tokens``."""
    finish_reason: str | None = None
    worker: int = 0
    """Which client process produced the record (0 for a single-process run)."""
    request_id: str | None = None
    """The ``x-request-id`` header sent, to join with server-side logs and timestamps."""
    asked_input_tokens: int | None = None
    """Prompt tokens the workload asked for (content before any chat template), when known."""
    asked_output_tokens: int | None = None
    """Output tokens the workload asked for (the request's ``max_tokens``)."""
    session: int | None = None
    """The conversation this request belongs to (None for single-turn workloads)."""
    turn: int | None = None
    """Its turn in the conversation, from 0."""
    inputs: int | None = None
    """Inputs in an embeddings request (its batch size); None for generation requests."""
    response_text: str | None = None
    """The generated text, kept only while a conversation needs it for its next turn."""

    @property
    def ok(self) -> bool:
        """True when the request completed without an error."""
        return self.error is None and self.end is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of the record."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """Rebuild a record from :meth:`to_dict` output."""
        return cls(**data)
