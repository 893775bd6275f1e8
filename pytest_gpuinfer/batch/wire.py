"""What the batch worker process and the driver in pytest say to each other.

The driver (:mod:`pytest_gpuinfer.batch.engines`) writes one JSON command per line to the
worker's stdin (``{"cmd": "run", "job": {...}}`` or ``{"cmd": "close"}``); the worker answers one
JSON event per line on a pipe of its own (``EVENT_FD_ENV`` names its descriptor), apart from
vLLM's and Ray's own chatter on stdout/stderr, which goes to the log file.
"""

from __future__ import annotations

from typing import Any

EVENT_FD_ENV = "GPUINFER_BATCH_EVENT_FD"
"""Environment variable carrying the descriptor the worker writes its events to."""

REJECTED = "rejected"
DEADLINE = "deadline"
FAILED = "failed"
"""Kinds of a job error event: the engine refused a row, the job passed its time limit, or
anything else went wrong (the message says what)."""


class RowRejected(ValueError):
    """The engine refused a row (e.g. a prompt longer than the model's context)."""


class JobDeadline(TimeoutError):
    """A job passed its time limit (the message says how far it got)."""


def out_row(
    row_id: int,
    prompt_tokens: int,
    output_tokens: int,
    finish_reason: str | None,
    done_s: float,
    where: str,
) -> dict[str, Any]:
    """One output row as the worker sends it."""
    return {
        "id": row_id,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "finish_reason": finish_reason,
        "done_s": done_s,
        "where": where,
    }
