"""Name why an engine failed to start, from its log: "engine failed to start: <reason>".

vLLM's startup failures end in generic lines ("Engine core initialization failed. See root cause
above"); the reason is an earlier ``SomeError: message`` line, often prefixed by the process
label, level and source location. :func:`startup_failure_reason` finds that line.
"""

from __future__ import annotations

import re

_PREFIX = re.compile(
    r"^\((?:[\w:]+) pid=\d+\)\s*(?:[A-Z]+\s+\d\d-\d\d \d\d:\d\d:\d\d \[[^\]]*\]\s*)?"
)
_ERROR = re.compile(
    r"\b((?:[A-Za-z_][\w.]*\.)?(?:[A-Z]\w*Error|[A-Z]\w*Exception|OutOfMemory\w*))(?::\s*(.+))?$"
)
_GENERIC = (
    "initialization failed",
    "see root cause",
    "see stack trace",
    "failed core proc",
    "engine core proc",
)
"""Messages that only point elsewhere; the root cause is another line."""

MEMORY_WORDS = ("memory", "kv cache", "oom", "out of memory", "gib", "allocate")
"""Words by which a reason is recognised as a memory problem."""


def startup_failure_reason(log_text: str) -> str | None:
    """The first specific ``Error: message`` line of a startup log (prefix stripped), or None."""
    candidates: list[str] = []
    for raw in log_text.splitlines():
        line = _PREFIX.sub("", raw.strip())
        match = _ERROR.search(line)
        if match is None or not match.group(2):
            continue
        reason = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2).strip()}"
        if any(word in reason.lower() for word in _GENERIC):
            continue
        if reason not in candidates:
            candidates.append(reason)
    if not candidates:
        return None
    memory = [c for c in candidates if is_memory_reason(c)]
    return (memory or candidates)[0]


def is_memory_reason(reason: str) -> bool:
    """True when a failure reason talks about memory (KV cache, allocation, OOM)."""
    lowered = reason.lower()
    return any(word in lowered for word in MEMORY_WORDS)


def explain_startup_failure(log_text: str, fallback: str = "no error line in the log") -> str:
    """One line for the fixture: ``engine failed to start: <reason from the log>``."""
    return f"engine failed to start: {startup_failure_reason(log_text) or fallback}"
