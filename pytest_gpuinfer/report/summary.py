"""What a reader wants first, from a report document: per-suite rows, per-test key figures,
verdicts; shared by the terminal summary, the Markdown summary and the HTML page."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """One judged figure of a test: what, whether it passed, the measured-vs-limit message."""

    name: str
    passed: bool
    message: str


def verdicts_of(test: dict[str, Any]) -> list[Verdict]:
    """Every verdict a test's results carry: SLOs, burst limits, leak checks, batches."""
    out: list[Verdict] = []
    for entry in test.get("results", ()):
        kind, payload = entry["kind"], entry["payload"]
        if kind == "load":
            for v in payload.get("verdicts") or ():
                out.append(Verdict(str(v.get("slo")), bool(v.get("passed")), str(v.get("message"))))
        elif kind in ("burst", "batches", "batch"):
            for v in payload.get("verdicts") or ():
                out.append(
                    Verdict(str(v.get("name")), bool(v.get("passed")), str(v.get("message")))
                )
        elif kind == "memory" and payload.get("leak"):
            leak = payload["leak"]
            out.append(
                Verdict(
                    "memory growth",
                    bool(leak["passed"]),
                    f"{leak['growth_mb']:+.1f} MB (limit {leak['max_growth_mb']:.0f} MB)",
                )
            )
        elif kind == "projection" and "fits" in payload:
            out.append(Verdict("projection fits", bool(payload["fits"]), "pessimistic bound"))
        elif kind == "regression":
            for row in payload.get("rows") or ():
                out.append(
                    Verdict(
                        f"regression {row.get('metric')}",
                        not row.get("regressed", False),
                        str(row.get("message", "")),
                    )
                )
    return out


def ms(value: Any) -> str:
    """Seconds as milliseconds text, '-' for missing."""
    return "-" if value is None else f"{value * 1e3:.1f}"


def key_figures(test: dict[str, Any]) -> list[str]:
    """Short 'name value' texts for a test's results (latency with its sample count)."""
    figures: list[str] = []
    for entry in test.get("results", ()):
        kind, payload, index = entry["kind"], entry["payload"], entry["index"]
        tag = f"{kind}{index}" if index > 1 else kind
        if kind == "load":
            summary = payload["summary"]
            ttft = summary["ttft"]
            figures.append(
                f"{tag}: TTFT p95 {ms(ttft['p95'])} ms (n={ttft['count']}), "
                f"{summary['request_throughput'] or 0:.1f} req/s, "
                f"{summary['failed']} failed"
            )
        elif kind == "burst":
            recovery = payload.get("recovery_s")
            figures.append(
                f"{tag}: {payload['shape'].get('name', '?')} dropped {payload['dropped']}, "
                f"max queue {payload.get('max_queue')}, recovery "
                + ("none" if recovery is None else f"{recovery:.2f} s")
            )
        elif kind == "memory":
            leak = payload.get("leak")
            growth = f", growth {leak['growth_mb']:+.1f} MB" if leak else ""
            figures.append(f"{tag}: peak {payload['peak_mb']:.0f} MB{growth}")
        elif kind == "boundary":
            failure = payload.get("first_failure") or {}
            figures.append(
                f"{tag}: {payload['dimension']} safe {payload.get('safe_value')}, "
                f"fails at {failure.get('value', '-')} ({failure.get('outcome', 'none')})"
            )
        elif kind in ("matrix", "sweep"):
            figures.append(f"{tag}: best {payload.get('best')}")
        elif kind == "projection":
            figures.append(f"{tag}: {'fits' if payload.get('fits') else 'does NOT fit'}")
    return figures


@dataclass
class SuiteRow:
    """One line of the end-of-run table: a suite's tests, its key figures and its verdicts."""

    suite: str
    outcomes: dict[str, int] = field(default_factory=dict)
    load_runs: int = 0
    worst_ttft_p95_s: float | None = None
    worst_ttft_count: int = 0
    best_throughput_rps: float | None = None
    bursts: int = 0
    worst_recovery_s: float | None = None
    dropped: int = 0
    memory_peak_mb: float | None = None
    boundaries: int = 0
    verdicts_passed: int = 0
    verdicts_failed: int = 0

    @property
    def tests(self) -> int:
        """How many tests ran in the suite."""
        return sum(self.outcomes.values())

    def outcome_text(self) -> str:
        """'3 passed, 1 failed'."""
        return ", ".join(f"{n} {name}" for name, n in sorted(self.outcomes.items())) or "-"

    def metrics_text(self) -> str:
        """The suite's headline figures."""
        parts = []
        if self.load_runs:
            parts.append(
                f"{self.load_runs} load runs, worst TTFT p95 {ms(self.worst_ttft_p95_s)} ms "
                f"(n={self.worst_ttft_count}), best {self.best_throughput_rps or 0:.1f} req/s"
            )
        if self.bursts:
            recovery = "-" if self.worst_recovery_s is None else f"{self.worst_recovery_s:.2f} s"
            parts.append(f"{self.bursts} bursts, {self.dropped} dropped, worst recovery {recovery}")
        if self.memory_peak_mb is not None:
            parts.append(f"memory peak {self.memory_peak_mb:.0f} MB")
        if self.boundaries:
            parts.append(f"{self.boundaries} boundary searches")
        return "; ".join(parts) or "-"

    def verdict_text(self) -> str:
        """'5/6 verdicts passed'."""
        total = self.verdicts_passed + self.verdicts_failed
        return f"{self.verdicts_passed}/{total} passed" if total else "-"


def suite_rows(tests: Iterable[dict[str, Any]]) -> list[SuiteRow]:
    """One row per suite, in the order suites first appear."""
    rows: dict[str, SuiteRow] = {}
    for test in tests:
        row = rows.setdefault(test["suite"], SuiteRow(test["suite"]))
        row.outcomes[test["outcome"]] = row.outcomes.get(test["outcome"], 0) + 1
        for verdict in verdicts_of(test):
            if verdict.passed:
                row.verdicts_passed += 1
            else:
                row.verdicts_failed += 1
        for entry in test.get("results", ()):
            _add_entry(row, entry["kind"], entry["payload"])
    return list(rows.values())


def _add_entry(row: SuiteRow, kind: str, payload: dict[str, Any]) -> None:
    """Fold one result into its suite's row."""
    if kind == "load":
        row.load_runs += 1
        ttft = payload["summary"]["ttft"]
        if ttft["p95"] is not None and (
            row.worst_ttft_p95_s is None or ttft["p95"] > row.worst_ttft_p95_s
        ):
            row.worst_ttft_p95_s, row.worst_ttft_count = ttft["p95"], ttft["count"]
        rps = payload["summary"]["request_throughput"]
        if rps is not None and (row.best_throughput_rps is None or rps > row.best_throughput_rps):
            row.best_throughput_rps = rps
    elif kind == "burst":
        row.bursts += 1
        row.dropped += int(payload.get("dropped") or 0)
        recovery = payload.get("recovery_s")
        if recovery is not None and (
            row.worst_recovery_s is None or recovery > row.worst_recovery_s
        ):
            row.worst_recovery_s = recovery
    elif kind == "memory":
        peak = payload.get("peak_mb")
        if peak is not None and (row.memory_peak_mb is None or peak > row.memory_peak_mb):
            row.memory_peak_mb = peak
    elif kind == "boundary":
        row.boundaries += 1


def table(rows: list[SuiteRow]) -> list[str]:
    """The rows as aligned text lines with a header."""
    header = ("suite", "tests", "outcomes", "verdicts", "key metrics")
    cells = [header] + [
        (r.suite, str(r.tests), r.outcome_text(), r.verdict_text(), r.metrics_text()) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    return ["  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4] for c in cells]


def merge(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several reports (e.g. one per suite job) as one document; the first's run and machine."""
    if len(documents) == 1:
        return documents[0]
    merged = dict(documents[0])
    merged["tests"] = [t for d in documents for t in d["tests"]]
    return merged
