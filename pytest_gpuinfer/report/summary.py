"""What a reader wants first, from a report document: per-suite rows, per-test key figures,
verdicts; shared by the terminal summary, the Markdown summary and the HTML page."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuinfer.metrics.verdicts import Status, Tally, Verdict, tally
from pytest_gpuinfer.report.kinds import KINDS, entry_verdicts


def verdicts_of(test: dict[str, Any]) -> list[Verdict]:
    """Every verdict a test's results carry, in the order they were recorded."""
    return [v for entry in test.get("results", ()) for v in entry_verdicts(entry)]


def ms(value: Any) -> str:
    """Seconds as milliseconds text, '-' for missing."""
    return "-" if value is None else f"{value * 1e3:.1f}"


def key_figures(test: dict[str, Any]) -> list[str]:
    """Short 'kind: figures' texts for a test's results (latency with its sample count)."""
    figures: list[str] = []
    for entry in test.get("results", ()):
        known = KINDS.get(entry["kind"])
        text = known.key_figure(entry["payload"]) if known is not None else None
        if text:
            index = entry["index"]
            figures.append(f"{entry['kind']}{index if index > 1 else ''}: {text}")
    return figures


@dataclass
class SuiteRow:
    """One line of the end-of-run table: a suite's tests, its key figures and its verdicts."""

    suite: str
    outcomes: dict[str, int] = field(default_factory=dict)
    payloads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The suite's recorded payloads by kind."""
    verdicts: Tally = field(default_factory=Tally)

    @property
    def tests(self) -> int:
        """How many tests ran in the suite."""
        return sum(self.outcomes.values())

    def outcome_text(self) -> str:
        """'3 passed, 1 failed'."""
        return ", ".join(f"{n} {name}" for name, n in sorted(self.outcomes.items())) or "-"

    def metrics_text(self) -> str:
        """The suite's headline figures, one part per kind that has them."""
        parts = []
        for name, known in KINDS.items():
            payloads = self.payloads.get(name)
            text = known.suite_text(payloads) if payloads else None
            if text:
                parts.append(text)
        return "; ".join(parts) or "-"

    def verdict_text(self) -> str:
        """'5/7 passed, 1 failed, 1 NOT JUDGED' (NOT JUDGED never counts as passed)."""
        return self.verdicts.text()


def suite_rows(tests: Iterable[dict[str, Any]]) -> list[SuiteRow]:
    """One row per suite, in the order suites first appear."""
    rows: dict[str, SuiteRow] = {}
    for test in tests:
        row = rows.setdefault(test["suite"], SuiteRow(test["suite"]))
        row.outcomes[test["outcome"]] = row.outcomes.get(test["outcome"], 0) + 1
        row.verdicts = row.verdicts + tally(verdicts_of(test))
        for entry in test.get("results", ()):
            row.payloads.setdefault(entry["kind"], []).append(entry["payload"])
    return list(rows.values())


def table(rows: list[SuiteRow]) -> list[str]:
    """The rows as aligned text lines with a header."""
    header = ("suite", "tests", "outcomes", "verdicts", "key metrics")
    cells = [header] + [
        (r.suite, str(r.tests), r.outcome_text(), r.verdict_text(), r.metrics_text()) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    return ["  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4] for c in cells]


def unsettled(tests: Iterable[dict[str, Any]], limit: int = 20) -> list[str]:
    """One line per FAIL and NOT JUDGED verdict (at most ``limit``, then a count of the rest):
    what a reader must act on, with the measured figure."""
    lines = []
    for test in tests:
        for verdict in verdicts_of(test):
            if verdict.status is not Status.PASS:
                lines.append(
                    f"{verdict.label}  {test['nodeid']}: {verdict.name}: {verdict.message}"
                )
    shown = [line.splitlines()[0][:300] for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"... and {len(lines) - limit} more (see the report)")
    return shown


def merge(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several reports (e.g. one per suite job) as one document; the first's run and machine."""
    if len(documents) == 1:
        return documents[0]
    merged = dict(documents[0])
    merged["tests"] = [t for d in documents for t in d["tests"]]
    return merged
