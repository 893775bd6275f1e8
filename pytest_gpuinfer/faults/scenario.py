"""Network faults by name, with their parameters: what the fault proxy injects, and when.

A fault applies to one HTTP exchange (a request and its response on one connection) with
probability ``p``, while the scenario's clock is inside ``[start_s, start_s + duration_s)``. The
vocabulary follows toxiproxy's toxics, so a toxiproxy backend could take the same scenarios:

========================  ==========================================================================
``latency``               each response chunk is held ``ms`` (+- ``jitter_ms``), pipelined: TTFT and
                          E2E grow by ``ms``, the gaps between chunks do not
``bandwidth``             the response is sent at ``kb_per_s`` kilobytes per second at most
``reset_mid_stream``      after ``after_bytes`` bytes of the response (head included) the client's
                          connection is reset (TCP RST) and the server's is closed
``stall``                 after ``after_bytes`` bytes the response stops for ``seconds`` (for good
                          when None), then goes on
``black_hole``            the request is swallowed: nothing reaches the server, nothing comes back
========================  ==========================================================================
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

FAULT_PARAMETERS: dict[str, dict[str, float | None]] = {
    "latency": {"ms": 100.0, "jitter_ms": 0.0},
    "bandwidth": {"kb_per_s": 64.0},
    "reset_mid_stream": {"after_bytes": 400.0},
    "stall": {"after_bytes": 400.0, "seconds": None},
    "black_hole": {},
}
"""Every fault the proxy knows, with its parameters' defaults."""

COMMON_PARAMETERS = ("p", "start_s", "duration_s")


class FaultSpecError(ValueError):
    """A fault name or parameter the proxy does not know, or a value it cannot take."""


@dataclass(frozen=True)
class Fault:
    """One fault: its name, its parameters, how likely per exchange, and its time window."""

    name: str
    params: dict[str, float | None] = field(default_factory=dict)
    p: float = 1.0
    """Probability that an exchange gets the fault."""
    start_s: float = 0.0
    """Seconds after the scenario is set when the fault starts to apply."""
    duration_s: float | None = None
    """How long it applies (None: until the scenario changes)."""

    def __post_init__(self) -> None:
        if self.name not in FAULT_PARAMETERS:
            raise FaultSpecError(
                f"unknown fault {self.name!r}; known: {', '.join(sorted(FAULT_PARAMETERS))}"
            )
        known = FAULT_PARAMETERS[self.name]
        unknown = sorted(set(self.params) - set(known))
        if unknown:
            raise FaultSpecError(
                f"fault {self.name!r} takes no {', '.join(unknown)}; it takes "
                f"{', '.join([*known, *COMMON_PARAMETERS])}"
            )
        if not 0.0 <= self.p <= 1.0:
            raise FaultSpecError(f"fault {self.name!r}: p must be within 0..1, got {self.p}")
        if self.start_s < 0 or (self.duration_s is not None and self.duration_s <= 0):
            raise FaultSpecError(f"fault {self.name!r}: start_s >= 0 and duration_s > 0 needed")
        for key, value in self.params.items():
            if value is not None and (not isinstance(value, int | float) or value < 0):
                raise FaultSpecError(f"fault {self.name!r}: {key} must be >= 0, got {value!r}")
        merged = {**known, **self.params}
        object.__setattr__(self, "params", merged)

    @classmethod
    def of(cls, name: str, **kwargs: Any) -> Fault:
        """A fault from a marker's words: ``Fault.of("latency", ms=200, p=0.5)``."""
        common = {key: kwargs.pop(key) for key in COMMON_PARAMETERS if key in kwargs}
        return cls(name, dict(kwargs), **common)

    def active_at(self, elapsed_s: float) -> bool:
        """True when ``elapsed_s`` after the scenario was set lies in the fault's window."""
        end = math.inf if self.duration_s is None else self.start_s + self.duration_s
        return self.start_s <= elapsed_s < end

    def param(self, key: str) -> float | None:
        """A parameter's value (the default when the fault did not set it)."""
        return self.params[key]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (what travels to the proxy process)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fault:
        """Rebuild a fault from :meth:`to_dict` output."""
        return cls(**data)

    def describe(self) -> str:
        """One line: ``reset_mid_stream(after_bytes=400) p=0.05``."""
        params = ", ".join(
            f"{k}={v:g}" if v is not None else f"{k}=None" for k, v in self.params.items()
        )
        text = f"{self.name}({params})"
        if self.p < 1:
            text += f" p={self.p:g}"
        if self.start_s or self.duration_s is not None:
            end = "end" if self.duration_s is None else f"{self.start_s + self.duration_s:g} s"
            text += f" from {self.start_s:g} s to {end}"
        return text
