"""A Markdown summary of a run (for ``$GITHUB_STEP_SUMMARY``): environment, per-suite table,
failures, per-test key figures, and the change against a baseline when one is given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_gpuinfer.report import summary


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str("-" if value is None else value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render(document: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """The summary as Markdown."""
    machine, run = document["machine"], document["run"]
    gpus = ", ".join(f"{g['name']} ({g['uuid']})" for g in machine.get("gpus") or []) or (
        f"none ({machine.get('gpu_unavailable_reason') or 'no GPU'})"
    )
    targets = sorted({t["target"]["description"] for t in document["tests"] if t.get("target")})
    counts = ", ".join(f"{n} {k}" for k, n in sorted((run.get("counts") or {}).items()))
    lines = [
        "## pytest-gpuinfer report",
        "",
        f"**{counts or 'no tests'}** (status {run.get('status')}, exit {run.get('exit_status')})",
        "",
        f"- GPUs: {gpus}; driver {machine.get('driver_version') or '-'}, "
        f"CUDA {machine.get('cuda_version') or '-'}",
        f"- CPU: {(machine.get('cpu') or {}).get('model')}",
        f"- target: {'; '.join(targets) or '-'}",
        "",
    ]
    rows = summary.suite_rows(document["tests"])
    lines += _table(
        ["suite", "tests", "outcomes", "verdicts", "key metrics"],
        [[r.suite, r.tests, r.outcome_text(), r.verdict_text(), r.metrics_text()] for r in rows],
    )
    failed = [t for t in document["tests"] if t["outcome"] in ("failed", "error")]
    if failed:
        lines += ["", "### failures", ""]
        lines += [f"- `{t['nodeid']}`: {_cell(t.get('message'))}" for t in failed]
    measured = [t for t in document["tests"] if t.get("results")]
    if measured:
        lines += ["", "### measured", ""]
        lines += _table(
            ["test", "outcome", "key figures"],
            [
                [f"`{t['nodeid']}`", t["outcome"], "; ".join(summary.key_figures(t))]
                for t in measured
            ],
        )
    if baseline is not None:
        lines += ["", "### against the baseline", ""]
        lines += _baseline_rows(document, baseline)
    return "\n".join(lines) + "\n"


def _baseline_rows(document: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Per test and load run: TTFT p95 and req/s, baseline vs this run."""
    base = {t["nodeid"]: t for t in baseline["tests"]}
    rows = []
    for test in document["tests"]:
        old_test = base.get(test["nodeid"])
        if old_test is None:
            continue
        old_loads = {e["index"]: e for e in old_test["results"] if e["kind"] == "load"}
        for entry in (e for e in test["results"] if e["kind"] == "load"):
            old = old_loads.get(entry["index"])
            if old is None:
                continue
            new_s, old_s = entry["payload"]["summary"], old["payload"]["summary"]
            rows.append(
                [
                    f"`{test['nodeid']}` run {entry['index']}",
                    f"{summary.ms(old_s['ttft']['p95'])} → {summary.ms(new_s['ttft']['p95'])}",
                    f"{old_s['request_throughput'] or 0:.2f} → "
                    f"{new_s['request_throughput'] or 0:.2f}",
                ]
            )
    return _table(["test", "TTFT p95 ms", "req/s"], rows) if rows else ["(no tests in common)"]
