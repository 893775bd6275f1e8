"""SLA projection: will N requests fit in a time window, at the throughput measured here?

This is a PROJECTION, labelled so everywhere it is printed: it extrapolates measured sustained
throughput (several independent measurements, e.g. the batches of the multi-batch test) to a
longer window. It shows its measured inputs and uses a pessimistic figure, a one-sided lower
confidence bound on the mean throughput (Student's t over the measurements), so a noisy
measurement makes the projection more cautious rather than more optimistic. It cannot see what
a long run adds (thermal throttling, memory growth, other tenants); say so when quoting it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_gpuinfer.metrics.verdicts import Verdict, judged

_T_ONE_SIDED_95 = {
    1: 6.314,
    2: 2.920,
    3: 2.353,
    4: 2.132,
    5: 2.015,
    6: 1.943,
    7: 1.895,
    8: 1.860,
    9: 1.833,
    10: 1.812,
    15: 1.753,
    20: 1.725,
    30: 1.697,
}


def t_quantile_95(dof: int) -> float:
    """One-sided 95 % Student t quantile for ``dof`` degrees of freedom (table, conservative)."""
    if dof < 1:
        return math.inf
    for key in sorted(_T_ONE_SIDED_95):
        if dof <= key:
            return _T_ONE_SIDED_95[key]
    return 1.645


@dataclass(frozen=True)
class Projection:
    """The projection, its measured inputs and its verdict."""

    requests: int
    window_s: float
    measured_rps: tuple[float, ...]
    mean_rps: float
    lower_bound_rps: float
    required_rps: float
    expected_s: float
    pessimistic_s: float
    fits: bool

    def text(self) -> str:
        """Human-readable, labelled as a projection."""
        hours = self.window_s / 3600
        return "\n".join(
            [
                f"PROJECTION (extrapolated from measurements, not measured): "
                f"{self.requests:,} requests in {hours:g} h",
                "  measured inputs: sustained req/s per run "
                + ", ".join(f"{v:.2f}" for v in self.measured_rps)
                + f" (n={len(self.measured_rps)}, mean {self.mean_rps:.2f})",
                f"  pessimistic throughput (95 % lower confidence bound): "
                f"{self.lower_bound_rps:.2f} req/s; needed {self.required_rps:.4f} req/s",
                f"  expected time {_duration(self.expected_s)}, pessimistic "
                f"{_duration(self.pessimistic_s)} -> "
                + ("FITS" if self.fits else "DOES NOT FIT")
                + " in the window at the pessimistic bound",
            ]
        )

    def verdict(self, source: str = "") -> Verdict:
        """Whether the work fits the window at the pessimistic bound (a PROJECTION's verdict)."""
        return judged(
            "SLA window",
            self.fits,
            f"PROJECTION: {self.requests:,} requests take {_duration(self.pessimistic_s)} at the "
            f"pessimistic {self.lower_bound_rps:.2f} req/s (95 % lower bound of "
            f"{len(self.measured_rps)} runs); window {_duration(self.window_s)}",
            measured=self.pessimistic_s,
            limit=self.window_s,
            unit="s",
            source=source or "the window asked for",
            count=len(self.measured_rps),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (infinite times as None)."""
        return {
            "kind": "projection",
            "requests": self.requests,
            "window_s": self.window_s,
            "measured_rps": list(self.measured_rps),
            "mean_rps": self.mean_rps,
            "lower_bound_rps": self.lower_bound_rps,
            "required_rps": self.required_rps,
            "expected_s": self.expected_s if math.isfinite(self.expected_s) else None,
            "pessimistic_s": self.pessimistic_s if math.isfinite(self.pessimistic_s) else None,
            "fits": self.fits,
        }


def _duration(seconds: float) -> str:
    """Seconds as h/min text."""
    if not math.isfinite(seconds):
        return "never (no throughput)"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min"


def project(
    measured_rps: Sequence[float], *, requests: int = 100_000, window_s: float = 24 * 3600.0
) -> Projection:
    """Whether ``requests`` fit in ``window_s`` at the pessimistic bound of ``measured_rps``."""
    if not measured_rps:
        raise ValueError("a projection needs at least one measured throughput")
    if requests < 1 or window_s <= 0:
        raise ValueError("requests must be >= 1 and window_s > 0")
    values = tuple(float(v) for v in measured_rps)
    mean = statistics.fmean(values)
    if len(values) >= 2:
        sem = statistics.stdev(values) / math.sqrt(len(values))
        lower = max(0.0, mean - t_quantile_95(len(values) - 1) * sem)
    else:
        lower = 0.5 * mean  # one measurement says nothing of its spread: halve it
    expected = requests / mean if mean > 0 else math.inf
    pessimistic = requests / lower if lower > 0 else math.inf
    return Projection(
        requests=requests,
        window_s=window_s,
        measured_rps=values,
        mean_rps=mean,
        lower_bound_rps=lower,
        required_rps=requests / window_s,
        expected_s=expected,
        pessimistic_s=pessimistic,
        fits=pessimistic <= window_s,
    )
