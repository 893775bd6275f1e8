"""Baselines per machine identity and the regression gate against them.

Storage follows pytest-benchmark's conventions: a storage root (``--benchmark-storage``, default
``./.benchmarks``), under it ``gpuinfer/<machine id>/NNNN_<name>.json`` files whose documents carry
``machine_info``, ``commit_info``, ``datetime``, ``version`` and a ``benchmarks`` list (each with
``name``, ``fullname`` and pytest-benchmark-shaped ``stats`` of the request latency), so
``pytest-benchmark --storage .benchmarks/gpuinfer list`` reads them. The ``gpuinfer`` sub-folder
keeps them apart from pytest-benchmark's own runs. The machine id extends pytest-benchmark's
(``Linux-CPython-3.11-64bit``) with what makes inference figures comparable: GPU model and count,
driver, engine and version, model and configuration.

A metric regresses when :func:`pytest_gpuinfer.metrics.stats.compare` finds it worse by more than
the tolerance AND a noise test on the raw samples says the difference is real: Mann-Whitney U
(one-sided, scipy) when scipy is installed, else a bootstrap interval of the difference in the
statistic. pytest-benchmark turns itself off under xdist; nothing here depends on its fixture, and
file numbers are taken with exclusive creation, so xdist workers can save side by side.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import itertools
import json
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_gpuinfer.load.runner import LoadResult
from pytest_gpuinfer.metrics import stats
from pytest_gpuinfer.metrics.verdicts import Unjudged, Verdict, judged, not_judged

SCHEMA = "pytest-gpuinfer-baseline/1"
DEFAULT_METRICS = ("ttft.p95", "tpot.p95", "e2e.p95", "throughput")
SAMPLE_METRICS = ("ttft", "tpot", "e2e")
_SIGNIFICANCE = 0.05
_BOOTSTRAP_ROUNDS = 2000


@dataclass(frozen=True)
class MachineIdentity:
    """What must match for two runs' figures to be comparable."""

    gpu_model: str
    gpu_count: int
    driver: str
    engine: str
    engine_version: str
    model: str
    configuration: str = ""

    def machine_id(self) -> str:
        """pytest-benchmark's machine id plus a readable, file-safe digest of this identity."""
        try:
            from pytest_benchmark.utils import get_machine_id

            base = str(get_machine_id())
        except ImportError:
            bits = "64bit" if sys.maxsize > 2**32 else "32bit"
            base = (
                f"{platform.system()}-{platform.python_implementation()}-"
                f"{'.'.join(platform.python_version_tuple()[:2])}-{bits}"
            )
        readable = f"{self.gpu_count}x{self.gpu_model}-{self.engine}-{self.engine_version}"
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{base}-{readable}-{digest}")

    def machine_info(self) -> dict[str, Any]:
        """pytest-benchmark's machine_info fields plus this identity under ``gpuinfer``."""
        return {
            "node": platform.node(),
            "processor": platform.processor(),
            "machine": platform.machine(),
            "python_implementation": platform.python_implementation(),
            "python_version": platform.python_version(),
            "release": platform.release(),
            "system": platform.system(),
            "gpuinfer": asdict(self),
        }


def _samples(result: LoadResult) -> dict[str, list[float]]:
    """Raw per-request samples of the latency metrics, plus completion gaps for throughput."""
    out: dict[str, list[float]] = {}
    records = [r for r in result.require_records("a baseline's samples") if r.ok]
    for metric in SAMPLE_METRICS:
        values: list[float] = []
        for record in records:
            values.extend(stats.request_samples(record, metric))
        out[metric] = [v for v in values if math.isfinite(v)]
    ends = sorted(r.end for r in records if r.end is not None)
    out["completion_gap"] = [b - a for a, b in itertools.pairwise(ends)]
    return out


def _benchmark_stats(values: Sequence[float]) -> dict[str, Any]:
    """pytest-benchmark's ``stats`` block for a list of seconds."""
    if not values:
        return {"rounds": 0}
    arr = np.asarray(values, dtype=float)
    q1, median, q3 = (float(v) for v in np.percentile(arr, [25, 50, 75]))
    mean = float(arr.mean())
    return {
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": mean,
        "stddev": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "rounds": int(arr.size),
        "median": median,
        "iqr": q3 - q1,
        "q1": q1,
        "q3": q3,
        "iterations": 1,
        "ops": 1.0 / mean if mean > 0 else 0.0,
        "total": float(arr.sum()),
    }


def baseline_entry(
    name: str, result: LoadResult, params: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One ``benchmarks`` entry: summary, raw samples and pytest-benchmark-shaped E2E stats."""
    samples = _samples(result)
    return {
        "group": "gpuinfer",
        "name": name,
        "fullname": name,
        "params": dict(params or {}),
        "stats": _benchmark_stats(samples["e2e"]),
        "extra_info": {
            "schema": SCHEMA,
            "summary": result.summary.to_dict(),
            "samples": samples,
            "config": result.config,
            "self_check": result.self_check.to_dict(),
        },
    }


def storage_dir(root: Path, identity: MachineIdentity) -> Path:
    """The folder that holds this identity's baselines."""
    return root / "gpuinfer" / identity.machine_id()


def save(
    root: Path,
    identity: MachineIdentity,
    entries: Sequence[Mapping[str, Any]],
    label: str = "gpuinfer",
) -> Path:
    """Write a baseline document as the next ``NNNN_<label>.json``; return its path."""
    folder = storage_dir(root, identity)
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "machine_info": identity.machine_info(),
        "commit_info": {},
        "benchmarks": list(entries),
        "datetime": datetime.datetime.now(datetime.UTC).isoformat(),
        "version": SCHEMA,
    }
    text = json.dumps(document, indent=1, allow_nan=False)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    for _ in range(1000):
        number = 1 + max((_number(p) for p in folder.glob("*.json")), default=0)
        path = folder / f"{number:04d}_{safe}.json"
        try:
            with open(path, "x", encoding="utf-8") as out:  # exclusive: xdist workers race here
                out.write(text)
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not find a free baseline file name in {folder}")


def _number(path: Path) -> int:
    """The NNNN counter of a stored file (0 when it has none)."""
    head = path.name.split("_", 1)[0]
    return int(head) if head.isdigit() else 0


def find(root: Path, identity: MachineIdentity, which: str | int | bool = True) -> Path | None:
    """The stored file to compare with: the latest (``True``) or the one numbered ``which``."""
    folder = storage_dir(root, identity)
    files = sorted(folder.glob("*.json"), key=_number)
    if not files:
        return None
    if which is True or which in ("", "latest"):
        return files[-1]
    wanted = int(which)
    return next((p for p in files if _number(p) == wanted), None)


def load_entry(path: Path, name: str) -> dict[str, Any] | None:
    """The ``benchmarks`` entry called ``name`` in a stored document."""
    document = json.loads(path.read_text())
    for entry in document.get("benchmarks", []):
        if entry.get("name") == name:
            return dict(entry)
    return None


@dataclass(frozen=True)
class NoiseTest:
    """Whether the samples differ beyond noise in the worse direction."""

    method: str
    significant: bool
    detail: str


def noise_test(
    old: Sequence[float], new: Sequence[float], *, worse_is_higher: bool, q: float = 50.0
) -> NoiseTest:
    """Mann-Whitney (scipy) or a bootstrap of the q-th percentile: is ``new`` worse than ``old``?"""
    if len(old) < 3 or len(new) < 3:
        return NoiseTest("none", True, f"too few samples for a noise test ({len(old)}, {len(new)})")
    try:
        from scipy.stats import mannwhitneyu  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return _bootstrap(old, new, worse_is_higher=worse_is_higher, q=q)
    alternative = "greater" if worse_is_higher else "less"
    p_value = float(mannwhitneyu(new, old, alternative=alternative).pvalue)
    return NoiseTest("Mann-Whitney U", p_value < _SIGNIFICANCE, f"p={p_value:.3g}")


def _bootstrap(
    old: Sequence[float], new: Sequence[float], *, worse_is_higher: bool, q: float
) -> NoiseTest:
    """95 % bootstrap interval of percentile(new) - percentile(old); real if it excludes 0."""
    rng = np.random.default_rng(0)
    a = np.asarray(old, dtype=float)
    b = np.asarray(new, dtype=float)
    ia = rng.integers(0, a.size, size=(_BOOTSTRAP_ROUNDS, a.size))
    ib = rng.integers(0, b.size, size=(_BOOTSTRAP_ROUNDS, b.size))
    diffs = np.percentile(b[ib], q, axis=1) - np.percentile(a[ia], q, axis=1)
    low, high = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
    significant = low > 0 if worse_is_higher else high < 0
    return NoiseTest(
        "bootstrap",
        significant,
        f"95% CI of p{q:g} change [{low * 1e3:+.2f}, {high * 1e3:+.2f}] ms",
    )


@dataclass(frozen=True)
class RegressionRow:
    """One metric: old vs new, the tolerance verdict, the noise verdict, the outcome."""

    finding: stats.RegressionFinding
    noise: NoiseTest

    @property
    def regressed(self) -> bool:
        """Worse beyond the tolerance and beyond noise."""
        return self.finding.regressed and self.noise.significant


@dataclass(frozen=True)
class RegressionReport:
    """The comparison of a run with its baseline."""

    name: str
    baseline_path: str
    rows: list[RegressionRow]
    tolerance: float
    client_bound: str = ""
    """Which of the two runs the load engine's self-check flagged, and why ("" when neither):
    such a comparison measures the machine, not the server, and is not judged."""

    @property
    def regressed(self) -> bool:
        """True when any metric regressed beyond tolerance and noise, both runs unflagged."""
        return not self.client_bound and any(row.regressed for row in self.rows)

    def verdicts(self) -> list[Verdict]:
        """One verdict per metric: FAIL when worse beyond the tolerance and beyond noise; NOT
        JUDGED when a run had too few samples for the statistic."""
        out = []
        for row in self.rows:
            f = row.finding
            name = f"regression {f.metric}"
            message = f"{f.message}; noise test {row.noise.method} {row.noise.detail}".rstrip()
            figures: dict[str, Any] = {
                "measured": f.change,
                "limit": self.tolerance,
                "unit": "fraction worse",
                "source": f"baseline {self.baseline_path}, tolerance {self.tolerance:.0%}",
            }
            if self.client_bound:
                noisy = f"{message}; not judged: {self.client_bound}"
                out.append(not_judged(name, Unjudged.NOISY, noisy, **figures))
            elif f.few_samples and not row.regressed:
                out.append(not_judged(name, Unjudged.TOO_FEW_SAMPLES, message, **figures))
            else:
                out.append(judged(name, not row.regressed, message, **figures))
        return out

    def table(self) -> str:
        """Old vs new per metric."""
        header = (
            f"{'metric':<13} {'baseline':>12} {'current':>12} {'change':>8}  "
            f"{'noise test':<42} verdict"
        )
        lines = [
            f"regression check of {self.name} against {self.baseline_path} "
            f"(tolerance {self.tolerance:.0%})",
            header,
            "-" * (len(header) + 10),
        ]
        for row in self.rows:
            f = row.finding
            verdict = (
                "not judged"
                if self.client_bound
                else "REGRESSED"
                if row.regressed
                else ("worse, within noise" if f.regressed else "ok")
            )
            change = "-" if not math.isfinite(f.change) else f"{f.change:+.1%}"
            lines.append(
                f"{f.metric:<13} {_value(f.metric, f.baseline):>12} "
                f"{_value(f.metric, f.current):>12} "
                f"{change:>8}  {(row.noise.method + ' ' + row.noise.detail)[:42]:<42} {verdict}"
            )
        if self.client_bound:
            lines.append(f"NOT JUDGED (too noisy): {self.client_bound}")
        return "\n".join(lines)


def _value(metric: str, value: float) -> str:
    """A metric value with its unit."""
    if not math.isfinite(value):
        return "-"
    if metric.startswith("throughput"):
        return f"{value:.2f} req/s"
    return f"{value * 1e3:.1f} ms"


def compare(
    name: str,
    result: LoadResult,
    baseline: Mapping[str, Any],
    *,
    baseline_path: str = "",
    tolerance: float = 0.10,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> RegressionReport:
    """Compare ``result`` with a stored entry: tolerance via stats.compare, then a noise test."""
    extra = baseline.get("extra_info") or {}
    findings = stats.compare(
        result.summary, extra.get("summary") or {}, tolerance=tolerance, metrics=metrics
    )
    old_samples: Mapping[str, Sequence[float]] = extra.get("samples") or {}
    new_samples = _samples(result)
    rows = []
    for finding in findings:
        metric, _, stat = finding.metric.partition(".")
        if metric == "throughput":
            # completion gaps: a longer gap is lower throughput
            noise = noise_test(
                old_samples.get("completion_gap", []),
                new_samples["completion_gap"],
                worse_is_higher=True,
            )
        else:
            q = float(stat[1:]) if stat.startswith("p") else 50.0
            noise = noise_test(
                old_samples.get(metric, []), new_samples.get(metric, []), worse_is_higher=True, q=q
            )
        rows.append(RegressionRow(finding, noise))
    flagged = client_bound_runs(result, extra.get("self_check") or {})
    return RegressionReport(name, baseline_path, rows, tolerance, flagged)


def client_bound_runs(result: LoadResult, stored_self_check: Mapping[str, Any]) -> str:
    """Which of the current run and the stored baseline's run the self-check flagged, and why
    ("" when neither; a baseline stored before the self-check was kept counts as unflagged)."""
    flagged = []
    if result.client_bound:
        flagged.append(f"this run ({'; '.join(result.self_check.reasons)})")
    if stored_self_check.get("client_bound"):
        reasons = "; ".join(str(r) for r in stored_self_check.get("reasons") or ())
        flagged.append(f"the baseline's run ({reasons})")
    if not flagged:
        return ""
    return (
        "the load engine's self-check flagged "
        + " and ".join(flagged)
        + ": the client, not the server, set part of the figures"
    )


def no_baseline(name: str, why: str, measured: LoadResult) -> Verdict:
    """The NOT JUDGED regression verdict of a run not compared with a baseline, and why."""
    summary = measured.summary
    return not_judged(
        f"regression {name}",
        Unjudged.NO_BASELINE,
        f"this run: TTFT p95 {summary.ttft.p95 * 1e3:.1f} ms, "
        f"{summary.request_throughput:.2f} req/s; {why}",
        measured=summary.ttft.p95,
        unit="s",
    )


def scaled_entry(entry: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """A copy of a stored entry as if every latency were ``factor`` times, throughput 1/factor.

    For checking the gate itself: ``factor=0.5`` is a baseline 50 % faster than the run.
    """
    fake = copy.deepcopy(dict(entry))
    extra = fake["extra_info"]
    summary = extra["summary"]
    for key, value in list(summary.items()):
        if isinstance(value, dict) and "p50" in value:
            for stat, number in value.items():
                if stat != "count" and isinstance(number, float):
                    value[stat] = number * factor
        elif key.endswith("throughput") and isinstance(value, float):
            summary[key] = value / factor
    extra["samples"] = {k: [v * factor for v in vs] for k, vs in extra["samples"].items()}
    return fake


def storage_root(uri: str | os.PathLike[str]) -> Path:
    """A pytest-benchmark storage URI (``file://PATH`` or a bare path) as a folder."""
    text = str(uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise ValueError(f"only file:// storage is supported for gpuinfer baselines, not {text!r}")
    return Path(text)
