"""``gpuinfer-report``: render JSON reports as one HTML page (or Markdown), this run beside a
baseline, and check reports against the shipped JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_gpuinfer.report.schema import SchemaProblem, validate


def _load(path: Path) -> dict[str, Any]:
    """Read and validate one report; exit with a one-paragraph error when it is not one."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"gpuinfer-report: cannot read {path}: {exc}") from None
    try:
        validate(document)
    except SchemaProblem as exc:
        raise SystemExit(f"gpuinfer-report: {path} is not a valid report: {exc}") from None
    return document


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="gpuinfer-report",
        description="Render pytest-gpuinfer JSON reports (report.json) as one self-contained "
        "HTML page, or as Markdown for a CI job summary; several reports (one per suite job) "
        "are shown as one run; --baseline puts another run beside it.",
    )
    p.add_argument("reports", nargs="+", type=Path, help="report.json files of this run")
    p.add_argument("--baseline", type=Path, help="report.json of the run to compare with")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="HTML file to write (default: beside "
        "the first report, report.html; or compare.html with --baseline)",
    )
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print a Markdown summary to stdout instead of writing HTML",
    )
    p.add_argument(
        "--check", action="store_true", help="only validate the reports against the schema"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gpuinfer-report``."""
    args = parser().parse_args(argv)
    documents = [_load(path) for path in args.reports]
    baseline = _load(args.baseline) if args.baseline else None
    if args.check:
        for path in args.reports:
            print(f"{path}: valid")
        return 0
    if args.markdown:
        from pytest_gpuinfer.report import markdown, summary

        sys.stdout.write(markdown.render(summary.merge(documents), baseline))
        return 0
    try:
        from pytest_gpuinfer.report import html
    except ImportError as exc:
        raise SystemExit(
            f"gpuinfer-report: HTML needs {exc.name}: pip install 'pytest-gpuinfer[report]'"
        ) from None
    name = "compare.html" if baseline is not None else "report.html"
    out = args.output or args.reports[0].with_name(name)
    html.write_page(documents, out, baseline=baseline)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
