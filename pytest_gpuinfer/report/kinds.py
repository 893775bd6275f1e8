"""Every kind of result a test can record, one object each, in one table: :data:`KINDS`.

A kind knows how its payload is made from the object a suite hands over, which verdicts the
payload carries, which JUnit properties and key figures it gives, what its suite row says and
which HTML it draws. The collector, the terminal and Markdown summaries, the HTML page and the
JUnit properties all read this table; none of them names a kind. HTML is drawn by functions in
:mod:`pytest_gpuinfer.report.html`, imported only when a page is rendered (it needs plotly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_gpuinfer.metrics.verdicts import Verdict, judged

Payload = dict[str, Any]
Entry = dict[str, Any]
"""A recorded result: ``{"kind", "index", "payload"}``."""
HtmlParts = tuple[list[str], list[str]]
"""HTML blocks for the test's section and plots for its figure grid."""


def _plain(obj: Any) -> Payload:
    """An object with ``to_dict()``, a dataclass or a dict, as plain JSON data."""
    from pytest_gpuinfer.report.jsonable import jsonable

    data = jsonable(obj)
    if not isinstance(data, dict):
        raise TypeError(f"a payload must be a dict or an object with to_dict(), not {obj!r}")
    return data


def _listed_verdicts(payload: Mapping[str, Any]) -> list[Verdict]:
    """The payload's ``verdicts`` list."""
    return [Verdict.from_dict(v) for v in payload.get("verdicts") or ()]


def _nothing(_payload: Mapping[str, Any]) -> list[Any]:
    """No verdicts, properties or figures."""
    return []


def _no_text(_payloads: Sequence[Mapping[str, Any]]) -> str | None:
    """No suite-row text."""
    return None


def _no_html(_test: dict[str, Any], _entries: Sequence[Entry], _baseline: Any) -> HtmlParts:
    """Nothing drawn."""
    return [], []


@dataclass(frozen=True)
class ReportKind:
    """One kind of recorded result: its payload, verdicts, properties, summary and figures."""

    name: str
    payload: Callable[[Any], Payload] = _plain
    """Builds the payload from what a suite records (a dict passes through as plain JSON)."""
    verdicts: Callable[[Mapping[str, Any]], list[Verdict]] = _listed_verdicts
    junit: Callable[[Mapping[str, Any]], list[tuple[str, Any]]] = _nothing
    """Key figures as JUnit properties (named ``<kind>[N]_<figure>``)."""
    key_figure: Callable[[Mapping[str, Any]], str | None] = lambda _p: None
    """One short text for the per-test figures line."""
    suite_text: Callable[[Sequence[Mapping[str, Any]]], str | None] = _no_text
    """The suite row's text from all the suite's payloads of this kind."""
    html: Callable[[dict[str, Any], Sequence[Entry], Any], HtmlParts] = _no_html
    """``html(test, entries of this kind, baseline test or None)``: blocks and plots."""
    description: str = field(default="", compare=False)

    def build(self, obj: Any) -> Payload:
        """The payload of ``obj``: a dict passes through as plain JSON, objects are converted."""
        if isinstance(obj, Mapping):
            return _plain(obj)
        return self.payload(obj)


def _ms(value: Any) -> str:
    """Seconds as milliseconds text, '-' for missing."""
    return "-" if value is None else f"{value * 1e3:.1f}"


def _rounded(value: Any, digits: int = 3) -> Any:
    """A number rounded for a property; other values as they are."""
    return round(value, digits) if isinstance(value, float) else value


# -- load ----------------------------------------------------------------------------------------


def _load_payload(result: Any) -> Payload:
    from pytest_gpuinfer.report.payloads import load_payload

    return load_payload(result)


def _load_junit(payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
    s = payload["summary"]

    def ms(d: Mapping[str, Any], stat: str) -> Any:
        value = d.get(stat)
        return None if value is None else value * 1e3

    return [
        ("requests", s["requests"]),
        ("failed", s["failed"]),
        ("ttft_p50_ms", ms(s["ttft"], "p50")),
        ("ttft_p95_ms", ms(s["ttft"], "p95")),
        ("ttft_p99_ms", ms(s["ttft"], "p99")),
        ("itl_p95_ms", ms(s["itl_token"], "p95")),
        ("e2e_p95_ms", ms(s["e2e"], "p95")),
        ("throughput_rps", s["request_throughput"]),
        ("client_bound", payload.get("client_bound")),
    ]


def _load_figure(payload: Mapping[str, Any]) -> str:
    s = payload["summary"]
    return (
        f"TTFT p95 {_ms(s['ttft']['p95'])} ms (n={s['ttft']['count']}), "
        f"{s['request_throughput'] or 0:.1f} req/s, {s['failed']} failed"
    )


def _load_suite(payloads: Sequence[Mapping[str, Any]]) -> str:
    worst = max(
        (p["summary"]["ttft"] for p in payloads if p["summary"]["ttft"]["p95"] is not None),
        key=lambda t: t["p95"],
        default=None,
    )
    best = max((p["summary"]["request_throughput"] or 0 for p in payloads), default=0)
    ttft = "-" if worst is None else f"{_ms(worst['p95'])} ms (n={worst['count']})"
    return f"{len(payloads)} load runs, worst TTFT p95 {ttft}, best {best:.1f} req/s"


def _load_html(test: dict[str, Any], entries: Sequence[Entry], baseline: Any) -> HtmlParts:
    from pytest_gpuinfer.report import html

    return html.load_parts(test, entries, baseline)


# -- burst ---------------------------------------------------------------------------------------


def _burst_payload(report: Any) -> Payload:
    from pytest_gpuinfer.report.payloads import burst_payload

    return burst_payload(report)


def _burst_junit(payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("shape", (payload.get("shape") or {}).get("name")),
        ("sent", payload.get("sent")),
        ("dropped", payload.get("dropped")),
        ("peak_throughput_rps", _rounded(payload.get("peak_throughput_rps"))),
        ("max_queue", payload.get("max_queue")),
        ("queue_source", payload.get("queue_source")),
        ("recovery_s", payload.get("recovery_s")),
        ("preemptions", payload.get("preemptions")),
    ]


def _recovery_text(payload: Mapping[str, Any]) -> str:
    if payload.get("recovery_unmeasured"):
        return "not measured"
    recovery = payload.get("recovery_s")
    return "none" if recovery is None else f"{recovery:.2f} s"


def _burst_figure(payload: Mapping[str, Any]) -> str:
    return (
        f"{(payload.get('shape') or {}).get('name', '?')} dropped {payload['dropped']}, "
        f"max queue {payload.get('max_queue')}, recovery {_recovery_text(payload)}"
    )


def _burst_suite(payloads: Sequence[Mapping[str, Any]]) -> str:
    dropped = sum(int(p.get("dropped") or 0) for p in payloads)
    recoveries = [p["recovery_s"] for p in payloads if p.get("recovery_s") is not None]
    worst = f"{max(recoveries):.2f} s" if recoveries else "-"
    return f"{len(payloads)} bursts, {dropped} dropped, worst recovery {worst}"


def _burst_html(test: dict[str, Any], entries: Sequence[Entry], baseline: Any) -> HtmlParts:
    from pytest_gpuinfer.report import html

    return html.burst_parts(entries)


# -- memory --------------------------------------------------------------------------------------


def _memory_verdicts(payload: Mapping[str, Any]) -> list[Verdict]:
    leak = payload.get("leak")
    if not leak:
        return []
    if "verdicts" in leak:
        return _listed_verdicts(leak)
    return [  # schema 1.0: one pass/fail growth figure
        judged(
            "memory growth",
            bool(leak["passed"]),
            f"{leak['growth_mb']:+.1f} MB (limit {leak['max_growth_mb']:.0f} MB)",
            measured=leak["growth_mb"],
            limit=leak["max_growth_mb"],
            unit="MB",
        )
    ]


def _memory_junit(payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
    props: list[tuple[str, Any]] = [
        ("peak_mb", round(payload.get("peak_mb") or 0.0, 1)),
        ("samples", payload.get("sample_count")),
    ]
    leak = payload.get("leak")
    if leak:
        props.append(("growth_mb", round(leak["growth_mb"], 1)))
        props.append(("leak_passed", leak["passed"]))
    return props


def _memory_figure(payload: Mapping[str, Any]) -> str:
    leak = payload.get("leak")
    growth = f", growth {leak['growth_mb']:+.1f} MB" if leak else ""
    return f"peak {payload['peak_mb']:.0f} MB{growth}"


def _memory_suite(payloads: Sequence[Mapping[str, Any]]) -> str | None:
    peaks = [p["peak_mb"] for p in payloads if p.get("peak_mb") is not None]
    return f"memory peak {max(peaks):.0f} MB" if peaks else None


def _memory_html(test: dict[str, Any], entries: Sequence[Entry], baseline: Any) -> HtmlParts:
    from pytest_gpuinfer.report import html

    return [], [
        html.memory_figure(e["payload"], f"memory {e['index']}: {e['payload'].get('source')}")
        for e in entries
    ]


# -- boundary ------------------------------------------------------------------------------------


def _boundary_payload(result: Any) -> Payload:
    from pytest_gpuinfer.report.payloads import boundary_payload

    return boundary_payload(result)


def _boundary_junit(payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
    failure = payload.get("first_failure") or {}
    return [
        ("dimension", payload.get("dimension")),
        ("safe_value", payload.get("safe_value")),
        ("first_failure", failure.get("value")),
        ("failure_class", failure.get("outcome")),
        ("probes", len(payload.get("probes") or ())),
        ("recoverable", payload.get("recoverable")),
    ]


def _boundary_figure(payload: Mapping[str, Any]) -> str:
    failure = payload.get("first_failure") or {}
    return (
        f"{payload['dimension']} safe {payload.get('safe_value')}, "
        f"fails at {failure.get('value', '-')} ({failure.get('outcome', 'none')})"
    )


def _boundary_suite(payloads: Sequence[Mapping[str, Any]]) -> str:
    return f"{len(payloads)} boundary searches"


def _boundary_html(test: dict[str, Any], entries: Sequence[Entry], baseline: Any) -> HtmlParts:
    from pytest_gpuinfer.report import html

    return [html.boundary_table(e["payload"]) for e in entries], []


# -- matrix and sweep ----------------------------------------------------------------------------


def _ranking_payload(every_candidate_runs: bool) -> Callable[[Any], Payload]:
    def build(ranking: Any) -> Payload:
        data = _plain(ranking)
        data["verdicts"] = [
            v.to_dict() for v in ranking.verdicts(every_candidate_runs=every_candidate_runs)
        ]
        data["table"] = ranking.table()
        return data

    return build


def _ranking_junit(payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [("best", payload.get("best")), ("candidates", len(payload.get("candidates") or ()))]


def _ranking_figure(payload: Mapping[str, Any]) -> str:
    return f"best {payload.get('best')}"


def _matrix_html(test: dict[str, Any], entries: Sequence[Entry], baseline: Any) -> HtmlParts:
    from pytest_gpuinfer.report import html

    return html.text_parts("matrix", entries), html.matrix_plots(test)


def _text_html(kind: str) -> Callable[[dict[str, Any], Sequence[Entry], Any], HtmlParts]:
    def draw(test: dict[str, Any], entries: Sequence[Entry], baseline: Any) -> HtmlParts:
        from pytest_gpuinfer.report import html

        return html.text_parts(kind, entries), []

    return draw


# -- batches, projection, regression, batch, note ------------------------------------------------


def _batches_payload(report: Any) -> Payload:
    data = _plain(report)
    data["table"] = report.table()
    return data


def _projection_payload(projection: Any) -> Payload:
    data = _plain(projection)
    data["verdicts"] = [projection.verdict().to_dict()]
    data["text"] = projection.text()
    return data


def _projection_verdicts(payload: Mapping[str, Any]) -> list[Verdict]:
    if "verdicts" in payload:
        return _listed_verdicts(payload)
    if "fits" not in payload:
        return []
    return [judged("SLA window", bool(payload["fits"]), "pessimistic bound")]  # schema 1.0


def _regression_payload(report: Any) -> Payload:
    from pytest_gpuinfer.report.payloads import regression_payload

    return regression_payload(report)


def _regression_verdicts(payload: Mapping[str, Any]) -> list[Verdict]:
    if "verdicts" in payload:
        return _listed_verdicts(payload)
    return [  # schema 1.0: the rows' outcomes
        judged(
            f"regression {row.get('metric')}",
            not row.get("regressed", False),
            str(row.get("message", "")),
        )
        for row in payload.get("rows") or ()
    ]


def _passed_junit(payload: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [("passed", payload.get("passed"))]


KINDS: dict[str, ReportKind] = {
    kind.name: kind
    for kind in (
        ReportKind(
            "load",
            payload=_load_payload,
            junit=_load_junit,
            key_figure=_load_figure,
            suite_text=_load_suite,
            html=_load_html,
            description="a load_runner run: config, summary, self-check, gauges, SLO verdicts",
        ),
        ReportKind(
            "burst",
            payload=_burst_payload,
            junit=_burst_junit,
            key_figure=_burst_figure,
            suite_text=_burst_suite,
            html=_burst_html,
            description="a burst_runner run: shape, timeline, recovery, verdicts",
        ),
        ReportKind(
            "memory",
            verdicts=_memory_verdicts,
            junit=_memory_junit,
            key_figure=_memory_figure,
            suite_text=_memory_suite,
            html=_memory_html,
            description="a memory tracker's timeline, phases and leak verdicts",
        ),
        ReportKind(
            "boundary",
            payload=_boundary_payload,
            junit=_boundary_junit,
            key_figure=_boundary_figure,
            suite_text=_boundary_suite,
            html=_boundary_html,
            description="an OOM/limit boundary search: probes, classes, failure-class verdict",
        ),
        ReportKind(
            "matrix",
            payload=_ranking_payload(every_candidate_runs=True),
            junit=_ranking_junit,
            key_figure=_ranking_figure,
            html=_matrix_html,
            description="a configuration matrix: every cell must run; the best cell",
        ),
        ReportKind(
            "sweep",
            payload=_ranking_payload(every_candidate_runs=False),
            junit=_ranking_junit,
            key_figure=_ranking_figure,
            html=_text_html("sweep"),
            description="a server-argument sweep: a configuration may fail to start; the best",
        ),
        ReportKind(
            "batches",
            payload=_batches_payload,
            junit=_passed_junit,
            html=_text_html("batches"),
            description="multi-batch consistency: success, spread, reload",
        ),
        ReportKind(
            "projection",
            payload=_projection_payload,
            verdicts=_projection_verdicts,
            junit=lambda p: [("fits", p.get("fits"))],
            key_figure=lambda p: "fits" if p.get("fits") else "does NOT fit",
            html=_text_html("projection"),
            description="an SLA-window PROJECTION from measured throughput",
        ),
        ReportKind(
            "regression",
            payload=_regression_payload,
            verdicts=_regression_verdicts,
            junit=lambda p: [("regressed", p.get("regressed"))],
            html=_text_html("regression"),
            description="a comparison with a stored baseline (or NOT JUDGED without one)",
        ),
        ReportKind(
            "batch",
            junit=_passed_junit,
            html=_text_html("batch"),
            description="an offline batch result",
        ),
        ReportKind(
            "fault",
            junit=lambda p: [
                ("exchanges", (p.get("fault_proxy") or {}).get("exchanges")),
                ("applied", sum(((p.get("fault_proxy") or {}).get("applied") or {}).values())),
            ],
            key_figure=lambda p: "; ".join(p.get("faults") or ()) or "no faults",
            html=_text_html("fault"),
            description="a test through the fault proxy: its faults and what the proxy applied",
        ),
        ReportKind(
            "soak",
            junit=lambda p: [("duration_s", _rounded(p.get("duration_s"), 1))],
            key_figure=lambda p: f"soak {p.get('duration_s', 0):.0f} s",
            html=_text_html("soak"),
            description="a soak run: windows, memory samples, memory and latency drift verdicts",
        ),
        ReportKind(
            "note",
            verdicts=lambda _p: [],
            html=_text_html("note"),
            description="a block of text a test wanted in the report",
        ),
    )
}
"""Every report kind, by name, in the order summaries show them."""


def kind(name: str) -> ReportKind:
    """The kind called ``name``; an unknown name is an error listing the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown report kind {name!r}; known: {', '.join(KINDS)}") from None


def entry_verdicts(entry: Mapping[str, Any]) -> list[Verdict]:
    """The verdicts a recorded result carries (none for an unknown kind of a newer report)."""
    known = KINDS.get(entry["kind"])
    return known.verdicts(entry["payload"]) if known is not None else []
