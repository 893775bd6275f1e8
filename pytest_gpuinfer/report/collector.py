"""One JSON report per run: tests, their outcomes and the results suites handed over.

The collector keeps results recorded during a test (``record``) until the test's report
carries them away (``take_pending``); the process that writes the file (the only process, or
the pytest-xdist controller) ``absorb``\\s each test report and rewrites the file atomically
(temporary file, then rename), so an interrupted run leaves a valid report of what completed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_gpuinfer.report.jsonable import jsonable
from pytest_gpuinfer.report.kinds import kind

SCHEMA_ID = "pytest-gpuinfer-report"
SCHEMA_VERSION = "1.1"
"""Bumped on any change a reader must know about (major: incompatible; minor: additions).
1.1: every verdict carries ``status`` (PASS, FAIL, NOT JUDGED), ``reason``, ``measured``,
``limit``, ``unit`` and ``source``; ``passed`` is true for PASS only; matrix, sweep,
projection, boundary and regression payloads carry ``verdicts`` too."""

SUITES = ("compat", "perf", "load", "memory", "docker", "batch", "faults", "plugin")
_MARKER_SUITES = {"oom": "memory", "leak": "memory"}


def suite_of(nodeid: str, markers: Any) -> str:
    """The suite a test belongs to: its folder under tests/, else its suite marker, else 'other'."""
    parts = nodeid.split("::")[0].replace("\\", "/").split("/")
    for index, part in enumerate(parts[:-1]):
        if part == "tests" and parts[index + 1] in SUITES:
            return parts[index + 1]
    names = set(markers or ())
    for suite in SUITES:
        if suite in names:
            return suite
    for marker, suite in _MARKER_SUITES.items():
        if marker in names:
            return suite
    return "other"


@dataclass
class ReportCollector:
    """The run's report: recorded results waiting for their test report, and the document."""

    path: Path | None
    run: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: int = 0

    def record(self, nodeid: str, kind_name: str, payload: Any) -> dict[str, Any]:
        """Keep a result of test ``nodeid`` until its report carries it; returns the entry.

        ``payload`` is the object a suite produced (its kind builds the JSON) or a plain dict.
        """
        built = kind(kind_name).build(payload)
        entries = self.pending.setdefault(nodeid, [])
        index = 1 + sum(1 for e in entries if e["kind"] == kind_name)
        done = self.tests.get(nodeid, {}).get("results", ())
        index += sum(1 for e in done if e["kind"] == kind_name)
        entry = {"kind": kind_name, "index": index, "payload": built}
        entries.append(entry)
        return entry

    def take_pending(self, nodeid: str) -> list[dict[str, Any]]:
        """The results recorded for ``nodeid`` since the last call (they leave the collector)."""
        return self.pending.pop(nodeid, [])

    def absorb(
        self,
        nodeid: str,
        *,
        when: str,
        outcome: str,
        duration_s: float,
        message: str | None = None,
        markers: list[str] | None = None,
        entries: list[dict[str, Any]] | None = None,
        target: dict[str, Any] | None = None,
        worker: str | None = None,
        properties: list[tuple[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Fold one phase's test report (setup, call or teardown) into the document."""
        test = self.tests.get(nodeid)
        if test is None:
            test = {
                "nodeid": nodeid,
                "suite": suite_of(nodeid, markers),
                "outcome": "passed",
                "phases": {},
                "duration_s": 0.0,
                "message": None,
                "markers": sorted(set(markers or ())),
                "worker": worker,
                "target": None,
                "properties": {},
                "results": [],
            }
            self.tests[nodeid] = test
        test["phases"][when] = outcome
        test["duration_s"] = round(test["duration_s"] + max(0.0, duration_s), 6)
        test["outcome"] = _overall(test["phases"])
        if message and test["message"] is None:
            test["message"] = message
        if target is not None:
            test["target"] = jsonable(target)
        if worker is not None:
            test["worker"] = worker
        for name, value in properties or ():
            test["properties"][str(name)] = jsonable(value)
        for entry in entries or ():
            test["results"].append(entry)
        return test

    def document(self, status: str = "running") -> dict[str, Any]:
        """The whole report as plain JSON data."""
        run = dict(self.run)
        run["status"] = status
        run["updated"] = _now()
        counts: dict[str, int] = {}
        for test in self.tests.values():
            counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
        run["counts"] = counts
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "run": run,
            "machine": self.machine,
            "tests": list(self.tests.values()),
        }

    def write(self, status: str = "running") -> Path | None:
        """Write the report atomically (temporary file in the same folder, then rename)."""
        if self.path is None:
            return None
        text = json.dumps(self.document(status), indent=1, allow_nan=False)
        write_atomically(self.path, text)
        self.writes += 1
        return self.path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _overall(phases: dict[str, str]) -> str:
    """A test's outcome from its phases: error (setup/teardown failed), failed, skipped, passed."""
    if phases.get("setup") == "failed" or phases.get("teardown") == "failed":
        return "error"
    for outcome in ("failed", "xfailed", "xpassed", "skipped"):
        if outcome in phases.values():
            return outcome
    return "passed"


def _now() -> str:
    """The current UTC time in ISO 8601, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
