"""Pick the best of measured candidates (matrix cells, server configurations) by an objective.

Each candidate is one load run (or a failure to run, with its reason). The objective (default:
highest request throughput that meets every SLO) picks one; every other candidate gets the reason
it lost: it failed to run, it missed an SLO (measured vs limit), or it scored lower (by how much).
The matrix and the server-argument sweep both rank with this, and the batch suite can too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuinfer.load.runner import LoadResult
from pytest_gpuinfer.metrics import slo
from pytest_gpuinfer.metrics.stats import Summary
from pytest_gpuinfer.metrics.verdicts import Verdict, judged


@dataclass(frozen=True)
class Objective:
    """What "best" means: a figure of the summary and whether higher is better."""

    name: str
    figure: Callable[[Summary], float]
    higher_is_better: bool
    unit: str
    scale: float = 1.0

    def fmt(self, value: float) -> str:
        """The figure with its unit."""
        return "-" if not math.isfinite(value) else f"{value * self.scale:.2f} {self.unit}"


OBJECTIVES: dict[str, Objective] = {
    "throughput": Objective("throughput", lambda s: s.request_throughput, True, "req/s"),
    "token_throughput": Objective(
        "token_throughput", lambda s: s.output_token_throughput, True, "tok/s"
    ),
    "goodput": Objective("goodput", lambda s: s.goodput or 0.0, True, "req/s"),
    "ttft_p95": Objective("ttft_p95", lambda s: s.ttft.p95, False, "ms", 1e3),
    "e2e_p95": Objective("e2e_p95", lambda s: s.e2e.p95, False, "ms", 1e3),
}


@dataclass
class Candidate:
    """One measured configuration: its parameters and its run (or why it has none)."""

    label: str
    params: dict[str, Any]
    result: LoadResult | None = None
    error: str | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Figures beyond the run's summary (e.g. server start time, memory)."""

    @property
    def met_slos(self) -> bool:
        """True when it ran and met every SLO."""
        return self.result is not None and all(v.passed for v in self.verdicts)

    def missed(self) -> list[str]:
        """Messages of the SLOs it missed."""
        return [v.message for v in self.verdicts if not v.passed]


@dataclass
class Ranking:
    """The candidates, the winner by the objective, and why each other one lost."""

    candidates: list[Candidate]
    objective: Objective
    slos: tuple[slo.SLO, ...]
    best: Candidate | None
    reasons: dict[str, str]

    def table(self, title: str = "") -> str:
        """One row per candidate: key figures, SLO verdict, and the outcome."""
        header = (
            f"{'candidate':<28} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} "
            f"{'TPOT p95':>9} {'E2E p95':>8} {'ok/n':>8}  outcome"
        )
        lines = [title] if title else []
        lines += [header, "-" * (len(header) + 20)]
        for cand in self.candidates:
            if cand.result is None:
                lines.append(f"{cand.label[:28]:<28} {'(no run)':>7}  {self.reasons[cand.label]}")
                continue
            s = cand.result.summary
            outcome = "BEST" if cand is self.best else self.reasons[cand.label]
            lines.append(
                f"{cand.label[:28]:<28} {s.request_throughput:>7.2f} "
                f"{s.output_token_throughput:>7.0f} {_ms(s.ttft.p50):>9} {_ms(s.ttft.p95):>9} "
                f"{_ms(s.tpot.p95):>9} {_ms(s.e2e.p95):>8} {f'{s.completed}/{s.requests}':>8}"
                f"  {outcome}"
            )
        lines.append(
            f"objective: {'highest' if self.objective.higher_is_better else 'lowest'} "
            f"{self.objective.name} meeting the SLOs ({', '.join(s.text for s in self.slos)})"
        )
        if self.best is None:
            lines.append("no candidate met the SLOs")
        else:
            lines.append(f"best: {self.best.label} ({self.objective.fmt(self.score(self.best))})")
        return "\n".join(lines)

    def verdicts(self, *, every_candidate_runs: bool = True) -> list[Verdict]:
        """'candidates ran' (each that raised or completed no request is named; a matrix
        needs every cell) and 'best', the winner by the objective among those meeting the SLOs."""
        out = []
        if every_candidate_runs:
            broken = {c.label: _why_not_run(c) for c in self.candidates}
            broken = {label: why for label, why in broken.items() if why is not None}
            out.append(
                judged(
                    "candidates ran",
                    not broken,
                    "; ".join(f"{label}: {why}" for label, why in broken.items())
                    if broken
                    else f"all {len(self.candidates)} ran",
                    measured=len(broken),
                    limit=0,
                    unit="candidates that raised",
                    source="every cell of a matrix must run",
                )
            )
        best = self.best
        slos = ", ".join(s.text for s in self.slos) or "no SLOs"
        out.append(
            judged(
                "best",
                best is not None,
                f"{best.label} ({self.objective.fmt(self.score(best))}) meets {slos}"
                if best is not None
                else f"no candidate met {slos}",
                measured=None if best is None else self.score(best) * self.objective.scale,
                unit=self.objective.unit,
                source="the SLOs in force",
            )
        )
        return out

    def score(self, cand: Candidate) -> float:
        """The objective's figure for a candidate (NaN without a run)."""
        if cand.result is None:
            return math.nan
        return float(self.objective.figure(cand.result.summary))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "objective": self.objective.name,
            "slos": [s.text for s in self.slos],
            "best": self.best.label if self.best else None,
            "candidates": [
                {
                    "label": c.label,
                    "params": c.params,
                    "error": c.error,
                    "met_slos": c.met_slos,
                    "score": _json(self.score(c)),
                    "outcome": "best" if c is self.best else self.reasons.get(c.label),
                    "summary": c.result.summary.to_dict() if c.result else None,
                    "extra": c.extra,
                }
                for c in self.candidates
            ],
        }


def _why_not_run(cand: Candidate) -> str | None:
    """Why a candidate has no figures to rank: it raised, or no request of it completed."""
    if cand.result is None:
        return f"raised {cand.error}"
    summary = cand.result.summary
    if summary.completed == 0:
        errors = ", ".join(f"{k}={v}" for k, v in sorted(summary.errors.items()))
        return f"no request completed ({summary.failed} failed: {errors or 'no answer'})"
    return None


def _ms(seconds: float) -> str:
    """Seconds as milliseconds, '-' for NaN."""
    return "-" if not math.isfinite(seconds) else f"{seconds * 1e3:.1f}"


def _json(value: float) -> float | None:
    """NaN as None."""
    return value if math.isfinite(value) else None


def rank(
    candidates: Sequence[Candidate],
    slos: Sequence[slo.SLO],
    objective: str | Objective = "throughput",
) -> Ranking:
    """Judge each candidate by ``slos`` and pick the best by ``objective``, with reasons."""
    obj = OBJECTIVES[objective] if isinstance(objective, str) else objective
    for cand in candidates:
        if cand.result is not None:
            cand.verdicts = slo.evaluate_all(slos, cand.result.summary)
    ranking = Ranking(list(candidates), obj, tuple(slos), None, {})
    eligible = [c for c in candidates if c.met_slos and math.isfinite(ranking.score(c))]
    sign = 1.0 if obj.higher_is_better else -1.0
    best = max(eligible, key=lambda c: sign * ranking.score(c), default=None)
    ranking.best = best
    for cand in candidates:
        if cand is best:
            continue
        if cand.result is None:
            ranking.reasons[cand.label] = f"did not run: {cand.error}"
        elif not cand.met_slos:
            ranking.reasons[cand.label] = "missed SLOs: " + "; ".join(cand.missed())
        elif best is not None:
            mine, top = ranking.score(cand), ranking.score(best)
            worse = "lower" if obj.higher_is_better else "higher"
            ranking.reasons[cand.label] = (
                f"{obj.name} {obj.fmt(mine)} {worse} than the best's {obj.fmt(top)}"
            )
        else:
            ranking.reasons[cand.label] = "no score"
    return ranking


def params_label(params: Mapping[str, Any]) -> str:
    """A short label from parameters: ``c=4 in=128 out=32``."""
    return " ".join(f"{k}={v}" for k, v in params.items())
