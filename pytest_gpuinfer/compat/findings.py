"""What a compat check learns, as data: findings and probed capabilities.

A check returns a :class:`Finding` (ok, a documented deviation, an absent capability, a
failure with the response, or figures nobody set a limit for); a probe returns a
:class:`Feature` (available, absent, or broken). Neither knows pytest: only the plugin layer
(``pytest_gpuinfer.plugin.compat_outcomes``) turns them into pass, xfail, skip or fail. Code deep
in a helper that cannot go on raises :class:`Unmet` carrying its finding.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ABSENT_STATUSES",
    "Deviation",
    "Feature",
    "Finding",
    "Outcome",
    "Unmet",
    "describe_response",
    "error_message",
    "json_or_none",
    "short",
]

ABSENT_STATUSES = frozenset({404, 405, 501})
"""The only answers to a valid request that mean "this server does not offer that": no such
route, method not allowed, not implemented. Anything else (400, 422, a 200 without choices)
on a valid request is a broken feature, and the check that needs it fails with the response."""


class Outcome(enum.Enum):
    """How a finding reads in a run."""

    OK = "ok"
    DEVIATION = "deviation"
    """A documented behaviour of this engine version that the check would otherwise fail."""
    ABSENT = "absent"
    """The server does not offer what the check needs (404/405/501, or documented as off)."""
    FAILURE = "failure"
    NOT_JUDGED = "not judged"
    """Figures were measured but nothing to judge them by was given; never a pass."""


@dataclass(frozen=True)
class Deviation:
    """A check a given engine version is known to fail, what it does instead, and how to tell."""

    engine: str
    versions: tuple[str, ...]
    check: str
    observed: str
    matches: Callable[[Any], bool]
    """True when the evidence (a response, or a stream's decoded events) shows exactly this
    deviation; anything else still fails."""


@dataclass(frozen=True)
class Finding:
    """The result of one compat check: its outcome, what was seen, and the evidence."""

    check: str
    outcome: Outcome
    detail: str
    evidence: str = ""
    """The response that decided it (status and body excerpt), when one did."""
    deviation: Deviation | None = None

    @property
    def ok(self) -> bool:
        """True for an ok finding."""
        return self.outcome is Outcome.OK

    def message(self) -> str:
        """One message with the check, what was seen and the evidence."""
        text = f"{self.check}: {self.detail}"
        if self.evidence:
            text += f"\nresponse: {self.evidence}"
        return text

    @classmethod
    def passed(cls, check: str, detail: str = "as expected") -> Finding:
        """An ok finding."""
        return cls(check, Outcome.OK, detail)

    @classmethod
    def failed(cls, check: str, detail: str, evidence: str = "") -> Finding:
        """A failure with what was seen."""
        return cls(check, Outcome.FAILURE, detail, evidence)

    @classmethod
    def absent(cls, check: str, detail: str, evidence: str = "") -> Finding:
        """The server lacks what the check needs."""
        return cls(check, Outcome.ABSENT, detail, evidence)


class Unmet(Exception):
    """A finding that ends a check early (absent, deviation, failure, not judged)."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message())
        self.finding = finding


@dataclass(frozen=True)
class Feature:
    """What a probe learned: available, absent (skip), or broken (fail), with the evidence."""

    name: str
    available: bool
    reason: str
    broken: bool = False

    def finding(self, check: str | None = None) -> Finding:
        """The finding a check that needs this feature gets from the probe."""
        label = check or self.name
        if self.available:
            return Finding.passed(label, self.reason)
        if self.broken:
            return Finding.failed(label, f"{self.name}: the probe found it broken: {self.reason}")
        return Finding.absent(label, f"{self.name} not supported by this target: {self.reason}")

    def require(self) -> None:
        """Return when available; raise Unmet (absent or failure) otherwise."""
        if not self.available:
            raise Unmet(self.finding())

    def __bool__(self) -> bool:
        return self.available


def short(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, for messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def error_message(response: httpx.Response) -> str:
    """The error text a server put in its body (OpenAI ``error.message``, FastAPI ``detail``)."""
    try:
        body = response.json()
    except ValueError:
        return short(response.text)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return short(error["message"])
        if isinstance(error, str):
            return short(error)
        if "detail" in body:
            detail = body["detail"]
            return short(detail if isinstance(detail, str) else json.dumps(detail))
        if isinstance(body.get("message"), str):
            return short(body["message"])
    return short(response.text)


def describe_response(response: httpx.Response, limit: int = 600) -> str:
    """``HTTP <status>: <body excerpt>`` for evidence in a finding."""
    return f"HTTP {response.status_code}: {short(response.text, limit)}"


def json_or_none(response: httpx.Response) -> Any:
    """The response body as JSON, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None
