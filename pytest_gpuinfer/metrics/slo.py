"""The SLO expression language: ``ttft_p95<500ms``, ``error_rate<0.1%``, ``throughput>=20rps``.

An expression names a metric (with a statistic for latency metrics), a comparison and a limit with
its unit. Limits are normalised when parsed: times to seconds, percentages to fractions, rates to
per second. The grammar is in :data:`GRAMMAR` and, with examples, in ``docs/metrics.md``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_gpuinfer.metrics import stats, units
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.verdicts import Unjudged, Verdict, judged, not_judged

GRAMMAR = """\
SLO grammar:
  slo    := metric ["_" stat] op number [unit]      several SLOs may be joined with commas
  metric := ttft | tpot | itl | itl_chunk | itl_token | e2e | queue      (latency; stat required)
          | error_rate | throughput | token_throughput | goodput        (whole run; no stat)
  stat   := pNN (0 <= NN <= 100, e.g. p50, p95, p99.9) | mean | min | max
  op     := < | <= | > | >=
  unit   := latency: us | ms | s (required)
            error_rate: % (a bare number is a fraction between 0 and 1)
            throughput, goodput: rps | req/s | rpm | req/min (required)
            token_throughput: tok/s | tokens/s | tps | tok/min (required)
examples: ttft_p95<500ms  itl_p99<=50ms  e2e_p99.9<2s  error_rate<0.1%  throughput>=20rps
          token_throughput>=100tok/s  goodput>=5rps"""

_LATENCY = units.LATENCY
_FRACTION = units.FRACTION
_REQ_RATE = units.REQUEST_RATE
_TOK_RATE = units.TOKEN_RATE

_FAMILY = {
    **{name: _LATENCY for name in stats.DISTRIBUTION_METRICS},
    "error_rate": _FRACTION,
    "throughput": _REQ_RATE,
    "goodput": _REQ_RATE,
    "token_throughput": _TOK_RATE,
}
_UNITS: dict[str, dict[str, float]] = {  # unit -> how many of it make one base unit
    _LATENCY: {"us": 1e6, "µs": 1e6, "ms": 1e3, "s": 1.0, "sec": 1.0},
    _FRACTION: {"%": 100.0},
    _REQ_RATE: {"rps": 1.0, "req/s": 1.0, "r/s": 1.0, "rpm": 60.0, "req/min": 60.0},
    _TOK_RATE: {"tok/s": 1.0, "tokens/s": 1.0, "tps": 1.0, "tok/min": 60.0},
}
_BASE_UNIT = {_LATENCY: "s", _FRACTION: "", _REQ_RATE: "rps", _TOK_RATE: "tok/s"}
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_METRICS_LONGEST_FIRST = sorted(_FAMILY, key=len, reverse=True)
_OP_RE = re.compile(r"[<>=!]+")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_PCT_RE = re.compile(r"p(\d+(?:\.\d+)?)")


class SLOSyntaxError(ValueError):
    """An SLO expression that cannot be read; the message names the bad part and the grammar."""

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"bad SLO {text!r}: {problem}\n{GRAMMAR}")
        self.text = text
        self.problem = problem


@dataclass(frozen=True)
class SLO:
    """One service-level objective; ``limit`` is in seconds, a fraction, or per second."""

    metric: str
    stat: str | None
    op: str
    limit: float
    text: str
    source: str = field(default="", compare=False)
    """Where this SLO came from (a marker, --slo, a target's defaults); not part of its value."""

    @property
    def name(self) -> str:
        """The left-hand side: 'ttft_p95', 'error_rate'."""
        return self.metric if self.stat is None else f"{self.metric}_{self.stat}"

    @property
    def per_request(self) -> bool:
        """True for latency SLOs, which each request can meet or miss on its own (goodput)."""
        return _FAMILY[self.metric] == _LATENCY

    def accepts(self, record: RequestRecord) -> bool:
        """Whether one request meets this (per-request) SLO; see :func:`meets`."""
        return meets(self, record)

    def canonical(self) -> str:
        """The SLO in base units (seconds, fraction, per second); parses back to an equal SLO."""
        return f"{self.name}{self.op}{self.limit!r}{_BASE_UNIT[_FAMILY[self.metric]]}"

    def sourced(self, source: str) -> SLO:
        """This SLO saying where it came from (kept when it already says so)."""
        return self if self.source else replace(self, source=source)


def _parse_stat(text: str, metric: str, stat: str | None) -> str | None:
    """Check and normalise the statistic part for ``metric``."""
    if _FAMILY[metric] != _LATENCY:
        if stat is not None:
            raise SLOSyntaxError(text, f"{metric} takes no statistic, but got {stat!r}")
        return None
    if stat is None:
        raise SLOSyntaxError(
            text, f"{metric} needs a statistic, e.g. {metric}_p95 or {metric}_mean"
        )
    if stat in ("mean", "min", "max"):
        return stat
    m = _PCT_RE.fullmatch(stat)
    if m is None:
        raise SLOSyntaxError(text, f"unknown statistic {stat!r} (use pNN, mean, min or max)")
    q = float(m.group(1))
    if q > 100.0:
        hint = f"; did you mean p{m.group(1)[:2]}.{m.group(1)[2:]}?" if len(m.group(1)) > 2 else ""
        raise SLOSyntaxError(text, f"percentile {stat!r} is over 100{hint}")
    return stats.stat_label(q)


def _split_lhs(text: str, lhs: str) -> tuple[str, str | None]:
    """Split the left-hand side into metric and (unchecked) statistic."""
    for metric in _METRICS_LONGEST_FIRST:
        if lhs == metric:
            return metric, None
        if lhs.startswith(metric + "_"):
            return metric, lhs[len(metric) + 1 :]
    if not lhs:
        raise SLOSyntaxError(text, "no metric before the comparison")
    guess = re.sub(r"_(p[\d.]+|mean|min|max)$", "", lhs)
    known = ", ".join(_FAMILY)
    raise SLOSyntaxError(text, f"unknown metric {guess!r} (known: {known})")


def _parse_limit(text: str, metric: str, rhs: str) -> float:
    """Read the number and unit and return the limit in base known_units."""
    m = _NUMBER_RE.match(rhs)
    if m is None:
        raise SLOSyntaxError(text, f"bad number {rhs!r}" if rhs else "no limit after the operator")
    unit = rhs[m.end() :].strip()
    if unit[:1].isdigit() or (unit[:1] in (".", "e", "E") and unit[1:2].isdigit()):
        raise SLOSyntaxError(text, f"bad number {rhs.split()[0] if rhs.split() else rhs!r}")
    value = float(m.group(0))
    if not math.isfinite(value):
        raise SLOSyntaxError(text, f"bad number {m.group(0)!r} (not finite)")
    if value < 0:
        raise SLOSyntaxError(text, f"limit {m.group(0)!r} is negative")
    family = _FAMILY[metric]
    known_units = _UNITS[family]
    if not unit:
        if family == _FRACTION:
            if value > 1:
                raise SLOSyntaxError(
                    text,
                    f"bare error_rate {m.group(0)!r} is over 1; write a percentage: {m.group(0)}%",
                )
            return value
        raise SLOSyntaxError(
            text, f"missing unit after {m.group(0)!r} ({family}: {', '.join(known_units)})"
        )
    lowered = unit if unit.startswith("µ") else unit.lower()
    if lowered not in known_units:
        other = next((f for f, u in _UNITS.items() if lowered in u), None)
        if other is not None:
            raise SLOSyntaxError(
                text,
                f"wrong unit {unit!r} for {metric}: {unit!r} is a {other} unit; "
                f"{metric} is a {family} ({', '.join(known_units)})",
            )
        raise SLOSyntaxError(text, f"unknown unit {unit!r} for {metric} ({', '.join(known_units)})")
    limit = value / known_units[lowered]
    if family == _FRACTION and limit > 1:
        raise SLOSyntaxError(text, f"error_rate limit {rhs!r} is over 100%")
    return limit


def parse_slo(text: str) -> SLO:
    """Parse one SLO expression such as ``ttft_p95<500ms``."""
    if not isinstance(text, str):
        raise TypeError(f"SLO expression must be a str, got {type(text).__name__}")
    body = text.strip()
    if not body:
        raise SLOSyntaxError(text, "empty expression")
    ops = list(_OP_RE.finditer(body))
    if not ops:
        raise SLOSyntaxError(text, "no comparison operator (use <, <=, > or >=)")
    if len(ops) > 1:
        raise SLOSyntaxError(text, f"more than one operator ({', '.join(o.group() for o in ops)})")
    op_match = ops[0]
    op = op_match.group()
    if op not in _OPS:
        raise SLOSyntaxError(text, f"unsupported operator {op!r} (use <, <=, > or >=)")
    lhs = body[: op_match.start()].strip().lower()
    rhs = body[op_match.end() :].strip()
    metric, raw_stat = _split_lhs(text, lhs)
    stat = _parse_stat(text, metric, raw_stat)
    limit = _parse_limit(text, metric, rhs)
    return SLO(metric=metric, stat=stat, op=op, limit=limit, text=body)


def parse_slos(texts: Iterable[str] | str) -> list[SLO]:
    """Parse many SLO texts, each of which may hold several comma-separated expressions."""
    if isinstance(texts, str):
        texts = [texts]
    out: list[SLO] = []
    for text in texts:
        for part in text.split(","):
            if part.strip():
                out.append(parse_slo(part))
    return out


SLOVerdict = Verdict
"""An SLO's verdict is the package's one :class:`~pytest_gpuinfer.metrics.verdicts.Verdict`."""

LATENCY_NOT_JUDGED = "latency"
"""The name of the NOT JUDGED verdict a run gets when no latency SLO applies to it."""


def _fmt(metric: str, value: float) -> str:
    """A value in the unit people read for its metric: ms, %, req/s or tok/s."""
    return units.with_unit(_FAMILY[metric], value)


def _few_samples_note(stat: str | None, count: int) -> str | None:
    """A warning when ``count`` samples are too few for the percentile ``stat``."""
    if stat is None or not stat.startswith("p"):
        return None
    need = stats.min_samples(float(stat[1:]))
    if count >= need:
        return None
    return f"only {count} samples: {stat} needs {need}"


def _verdict(slo: SLO, passed: bool, measured: float, count: int, message: str) -> Verdict:
    """A judged SLO verdict with its figures and source."""
    return judged(slo.text, passed, message, **_figures(slo, measured, count))


def _unjudged(slo: SLO, reason: Unjudged, measured: float, count: int, message: str) -> Verdict:
    """A NOT JUDGED SLO verdict with its figures and source."""
    return not_judged(slo.text, reason, message, **_figures(slo, measured, count))


def _figures(slo: SLO, measured: float, count: int) -> dict[str, Any]:
    """The measured figure, limit, unit, source and sample count of an SLO's verdict."""
    return {
        "measured": measured,
        "limit": slo.limit,
        "unit": _BASE_UNIT[_FAMILY[slo.metric]] or "fraction",
        "source": slo.source,
        "count": count,
    }


ExactPercentile = Callable[[str, float, tuple[float, float]], float | None]
"""Computes a streamed run's percentile exactly: (summary field such as ``ttft`` or
``itl_token``, percentile 0..100, the sketch's bounds) -> the exact value, or None."""


def _judge_estimate(
    slo: SLO, value: stats.Distribution, measured: float, exact: ExactPercentile | None
) -> tuple[float, str] | Verdict:
    """For a streamed run's estimated percentile: the value to judge and how it was had, or
    NOT JUDGED when its bounds hold the limit and ``exact`` cannot settle it."""
    assert slo.stat is not None
    count = value.count
    if value.exact or not count or not slo.stat.startswith("p"):
        return measured, ""
    if _few_samples_note(slo.stat, count) is not None:
        return measured, ""
    q = float(slo.stat[1:])
    lo, hi = value.bounds(q)
    bounds = f"{_fmt(slo.metric, lo)}..{_fmt(slo.metric, hi)}"
    if not lo <= slo.limit <= hi:
        return measured, f"; t-digest estimate, exact value within {bounds}"
    found = None if exact is None else exact(stats.summary_field(slo.metric), q, (lo, hi))
    if found is not None:
        return found, f"; exact from the record file: the estimate's bounds {bounds} held the limit"
    return _unjudged(
        slo,
        Unjudged.WITHIN_ESTIMATE_ERROR,
        measured,
        count,
        f"{slo.name} estimated {_fmt(slo.metric, measured)}: the exact value lies within "
        f"{bounds}, which holds the limit {_fmt(slo.metric, slo.limit)}, and no record file "
        f"settled it (keep one: pyarrow installed, Retention(spill=True)) (n={count})",
    )


def evaluate(slo: SLO, summary: stats.Summary, exact: ExactPercentile | None = None) -> Verdict:
    """Judge one SLO against a run summary.

    A percentile from fewer samples than it needs (p99 from under 100) is NOT JUDGED: it is
    the sample's maximum, which says nothing either way about the 99th percentile. A streamed
    run's percentile is an estimate with bounds: judged from the estimate when the limit lies
    outside them, else computed exactly by ``exact`` (from the run's record file), else NOT
    JUDGED (within estimate error), so a sketch's error never flips a verdict.
    """
    value = summary.metric(slo.metric)
    how = ""
    if isinstance(value, stats.Distribution):
        assert slo.stat is not None
        measured = value.stat(slo.stat)
        count = value.count
        estimate = _judge_estimate(slo, value, measured, exact)
        if isinstance(estimate, Verdict):
            return estimate
        measured, how = estimate
    else:
        measured = value
        count = summary.requests if slo.metric == "error_rate" else summary.completed
    if slo.metric == "goodput" and summary.goodput is None:
        msg = f"{slo.name}: no per-request SLOs to judge goodput against (n={count})"
        return _verdict(slo, False, measured, count, msg)
    if math.isnan(measured):
        return _verdict(slo, False, measured, count, f"{slo.name}: no samples (n={count})")
    shown = ">" if measured > slo.limit else ("<" if measured < slo.limit else "=")
    figures = (
        f"{slo.name} = {_fmt(slo.metric, measured)} {shown} limit {_fmt(slo.metric, slo.limit)}"
    )
    note = _few_samples_note(slo.stat, count)
    if note is not None:
        return _unjudged(
            slo,
            Unjudged.TOO_FEW_SAMPLES,
            measured,
            count,
            f"{figures} ({note}); run more requests to judge it",
        )
    return _verdict(
        slo, _OPS[slo.op](measured, slo.limit), measured, count, f"{figures} (n={count}{how})"
    )


def evaluate_all(
    slos: Sequence[SLO], summary: stats.Summary, exact: ExactPercentile | None = None
) -> list[Verdict]:
    """Judge every SLO against a run summary."""
    return [evaluate(slo, summary, exact) for slo in slos]


def is_per_request(slo: SLO) -> bool:
    """True for latency SLOs, which each request can meet or miss on its own (used for goodput)."""
    return slo.per_request


def meets(slo: SLO, record: RequestRecord) -> bool:
    """Whether one request meets a latency SLO: its own samples' statistic is within the limit.

    A request has one TTFT, TPOT, E2E and queue time, so the statistic is that value; for ITL the
    statistic is taken over the request's own gaps. A failed request never meets an SLO; a
    completed one without samples for the metric (e.g. TPOT of a one-token reply) meets it.
    """
    if not is_per_request(slo):
        raise ValueError(f"{slo.text!r} is not a per-request SLO")
    if not record.ok:
        return False
    value = stats.request_value(record, slo.metric, slo.stat)
    return value is None or _OPS[slo.op](value, slo.limit)


NO_FAILED_REQUESTS = SLO(
    "error_rate",
    None,
    "<=",
    0.0,
    "error_rate<=0 (default: no failed request)",
    "default of every load run: a load test in CI fails when requests fail",
)
"""The verdict every run gets unless an ``error_rate`` SLO or ``allow_errors`` says otherwise."""


def latency_not_judged(summary: stats.Summary) -> Verdict:
    """The NOT JUDGED verdict of a run that no latency SLO applies to, with its figures."""
    ttft, tpot, e2e = summary.ttft, summary.tpot, summary.e2e
    figures = (
        f"TTFT p95 {units.ms(ttft.p95, 1)} ms, TPOT p95 {units.ms(tpot.p95, 1)} ms, "
        f"E2E p95 {units.ms(e2e.p95, 1)} ms (n={ttft.count})"
    )
    return not_judged(
        LATENCY_NOT_JUDGED,
        Unjudged.NO_LIMIT,
        f"no latency SLO applies to this run: {figures}; set one with --slo, "
        "@pytest.mark.slo or the gpuinfer_slo ini key",
        measured=ttft.p95,
        unit="s",
        count=ttft.count,
    )


def unjudged_latency(slos: Sequence[SLO], summary: stats.Summary) -> list[Verdict]:
    """``[latency NOT JUDGED]`` when no latency SLO is among ``slos``, else nothing."""
    return [] if any(s.per_request for s in slos) else [latency_not_judged(summary)]


def judge_run(
    slos: Sequence[SLO],
    summary: stats.Summary,
    *,
    allow_errors: bool = False,
    exact: ExactPercentile | None = None,
) -> list[Verdict]:
    """Judge a load run: its SLOs, and by default that no request failed.

    A load test in CI must fail when requests fail, whatever its latency SLOs say; an explicit
    ``error_rate`` SLO replaces that default, and ``allow_errors`` turns it off. (Whether a run
    with no latency SLO reads NOT JUDGED for latency is :func:`unjudged_latency`'s.)
    """
    verdicts = evaluate_all(slos, summary, exact)
    if allow_errors or any(s.metric == "error_rate" for s in slos):
        return verdicts
    failed = summary.failed
    if failed == 0:
        message = f"no failed requests (n={summary.requests})"
    else:
        classes = ", ".join(f"{k}={v}" for k, v in sorted(summary.errors.items()))
        message = (
            f"{failed} of {summary.requests} requests failed ({classes}); any failed request "
            "fails a load run unless an error_rate SLO or allow_errors (--allow-errors) allows it"
        )
    verdicts.append(
        _verdict(NO_FAILED_REQUESTS, failed == 0, summary.error_rate, summary.requests, message)
    )
    return verdicts


def verdict_dict(verdict: Verdict) -> dict[str, object]:
    """Plain-JSON form of an SLO verdict: the shared form plus ``slo`` (schema 1.0 readers)."""
    return {"slo": verdict.name, **verdict.to_dict()}
