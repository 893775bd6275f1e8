"""The HTML page: one self-contained file (plotly.js embedded, no network needed) with latency
CDFs and histograms per test, burst timelines, memory over time, configuration-matrix heatmaps,
boundary tables and the environment; optionally this run beside a baseline run."""

from __future__ import annotations

import html
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from pytest_gpuinfer.report import summary
from pytest_gpuinfer.report.collector import write_atomically
from pytest_gpuinfer.report.kinds import KINDS, Entry, HtmlParts

FIGURE_WIDTH = 640
"""Pixels; fixed, so plots keep their size however the page is opened (two side by side on a
wide screen, one per row on a narrow one)."""
LATENCY_METRICS = (("ttft", "TTFT"), ("e2e", "E2E"), ("tpot", "TPOT"), ("itl_token", "ITL/token"))
_PHASE_COLOURS = {"pre": "rgba(80,160,80,0.10)", "burst": "rgba(220,60,60,0.12)"}
_OUTCOME_COLOURS = {
    "passed": "#1a7f37",
    "failed": "#cf222e",
    "error": "#cf222e",
    "skipped": "#9a6700",
    "xfailed": "#6e7781",
    "xpassed": "#9a6700",
}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 2em 3em;color:#1f2328}
h1{margin-top:0.8em} h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:2em}
h3{margin-bottom:0.3em;font-family:ui-monospace,monospace;font-size:1em}
table{border-collapse:collapse;margin:0.5em 0 1em} td,th{border:1px solid #d0d7de;padding:3px 8px;
text-align:left;vertical-align:top;font-size:0.9em} th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{color:white;border-radius:4px;padding:1px 6px;font-size:0.85em}
.test{border:1px solid #d0d7de;border-radius:6px;padding:0.5em 1em;margin:1em 0}
pre{background:#f6f8fa;padding:8px;overflow-x:auto;font-size:0.85em}
.plots{display:flex;flex-wrap:wrap;gap:8px} .plots>div{flex:0 0 auto}
.note{color:#57606a;font-size:0.9em} .worse{color:#cf222e} .better{color:#1a7f37}
td.PASS{color:#1a7f37} td.FAIL{color:#cf222e;font-weight:bold} td.NOT_JUDGED{color:#9a6700}
"""


def _e(value: Any) -> str:
    """HTML-escaped text of any value ('-' for None)."""
    return "-" if value is None else html.escape(str(value))


def _table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()
) -> str:
    """An HTML table; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_html(fig: go.Figure, height: int = 360) -> str:
    """A figure as a div (plotly.js is embedded once in the page head)."""
    fig.update_layout(
        height=height,
        width=FIGURE_WIDTH,
        margin={"l": 60, "r": 20, "t": 40, "b": 45},
        template="plotly_white",
        legend={"font": {"size": 10}},
    )
    return str(
        pio.to_html(
            fig,
            full_html=False,
            include_plotlyjs=False,
            config={"displaylogo": False},
            default_width=f"{FIGURE_WIDTH}px",
            default_height=f"{height}px",
        )
    )


def _ms(values: Sequence[float]) -> list[float]:
    """Seconds to milliseconds."""
    return [v * 1e3 for v in values]


def _cdf_trace(values: Sequence[float], name: str, dash: str = "solid") -> go.Scatter:
    """An empirical CDF of ``values`` (already sorted seconds) in ms."""
    n = len(values)
    return go.Scatter(
        x=_ms(values),
        y=[(i + 1) / n for i in range(n)],
        mode="lines",
        name=name,
        line={"dash": dash, "shape": "hv"},
    )


def _loads(test: dict[str, Any]) -> list[dict[str, Any]]:
    """The test's load results (entries)."""
    return [e for e in test.get("results", ()) if e["kind"] == "load"]


def latency_figures(test: dict[str, Any], baseline: dict[str, Any] | None = None) -> list[str]:
    """Per load run: CDFs of TTFT and E2E (baseline dashed), of TPOT and per-token ITL, and a
    TTFT/E2E histogram."""
    loads = _loads(test)
    if not loads:
        return []
    request_cdf, token_cdf, hist = go.Figure(), go.Figure(), go.Figure()
    many = len(loads) > 1
    for entry in loads:
        samples = entry["payload"].get("samples", {})
        values, counts = samples.get("values", {}), samples.get("counts", {})
        run = f"run {entry['index']} " if many else ""
        for key, label in LATENCY_METRICS:
            if values.get(key):
                figure = request_cdf if key in ("ttft", "e2e") else token_cdf
                figure.add_trace(_cdf_trace(values[key], f"{run}{label} (n={counts.get(key)})"))
        for key, label in LATENCY_METRICS[:2]:
            if values.get(key):
                hist.add_trace(
                    go.Histogram(x=_ms(values[key]), name=f"{run}{label}", opacity=0.6, nbinsx=40)
                )
    for entry in _loads(baseline or {}):
        values = entry["payload"].get("samples", {}).get("values", {})
        run = f"run {entry['index']} " if many else ""
        for key, label in LATENCY_METRICS:
            if values.get(key):
                figure = request_cdf if key in ("ttft", "e2e") else token_cdf
                figure.add_trace(_cdf_trace(values[key], f"baseline {run}{label}", dash="dash"))
    legend = {"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0}
    request_cdf.update_layout(
        title="TTFT and E2E CDF (per completed request)",
        xaxis_title="ms",
        yaxis_title="fraction of requests",
        yaxis_range=[0, 1.02],
        legend=legend,
    )
    token_cdf.update_layout(
        title="TPOT and per-token ITL CDF",
        xaxis_title="ms (log)",
        yaxis_title="fraction of samples",
        yaxis_range=[0, 1.02],
        xaxis_type="log",
        legend=legend,
    )
    hist.update_layout(
        title="TTFT and E2E histogram",
        xaxis_title="ms",
        yaxis_title="requests",
        barmode="overlay",
        legend=legend,
    )
    height = 380 + 18 * (len(loads) + len(_loads(baseline or {})))
    return [_figure_html(f, height=height) for f in (request_cdf, token_cdf, hist)]


def _phase_spans(
    timeline: Sequence[dict[str, Any]], bucket_s: float
) -> list[tuple[str, float, float]]:
    """Consecutive runs of one phase in a timeline: (phase, start, end)."""
    spans = []
    for phase, rows in itertools.groupby(timeline, key=lambda r: r["phase"]):
        group = list(rows)
        spans.append((str(phase), group[0]["t_s"], group[-1]["t_s"] + bucket_s))
    return spans


def burst_figure(payload: dict[str, Any], title: str) -> str:
    """Throughput, queue depth and p95 over time, phases shaded."""
    timeline = payload.get("timeline") or []
    bucket = float(payload.get("bucket_s") or 1.0)
    t = [row["t_s"] for row in timeline]
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=("completed req/s", "queue depth", "latency p95 (ms)"),
    )
    fig.add_trace(
        go.Scatter(
            x=t,
            y=[row["completed"] / bucket for row in timeline],
            name="completed req/s",
            mode="lines+markers",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=t,
            y=[row["sent"] / bucket for row in timeline],
            name="sent req/s",
            mode="lines",
            line={"dash": "dot"},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=t,
            y=[row["queue"] for row in timeline],
            name=f"queue ({payload.get('queue_source', '?')})",
            mode="lines+markers",
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=t,
            y=[row["in_flight"] for row in timeline],
            name="in flight",
            mode="lines",
            line={"dash": "dot"},
        ),
        row=2,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=t,
            y=[None if row["p95_s"] is None else row["p95_s"] * 1e3 for row in timeline],
            name="p95",
            mode="lines+markers",
            connectgaps=False,
        ),
        row=3,
        col=1,
    )
    for phase, start, end in _phase_spans(timeline, bucket):
        colour = _PHASE_COLOURS.get(phase)
        if colour:
            fig.add_vrect(x0=start, x1=end, fillcolor=colour, line_width=0, row="all", col=1)
    fig.update_xaxes(title_text="seconds from start", row=3, col=1)
    fig.update_layout(title=title)
    return _figure_html(fig, height=620)


def memory_figure(payload: dict[str, Any], title: str) -> str:
    """Tracked memory over time with the baseline and batch phases."""
    timeline = payload.get("timeline") or []
    fig = go.Figure(
        go.Scatter(
            x=[p[0] for p in timeline],
            y=[p[1] for p in timeline],
            mode="lines",
            name=f"{payload.get('memory_kind', 'memory')} MB",
        )
    )
    if payload.get("baseline_mb") is not None:
        fig.add_hline(y=payload["baseline_mb"], line_dash="dash", annotation_text="baseline")
    for phase in payload.get("phases") or ():
        fig.add_vrect(
            x0=phase["start_s"],
            x1=phase["end_s"],
            fillcolor="rgba(80,120,220,0.10)",
            line_width=0,
            annotation_text=phase["label"],
            annotation_position="top left",
        )
    fig.update_layout(title=title, xaxis_title="seconds", yaxis_title="MB")
    return _figure_html(fig)


def matrix_cells(test: dict[str, Any]) -> list[dict[str, Any]]:
    """Matrix cells (concurrency, in, out, req/s, TTFT p95): from a recorded matrix, else from
    the test's load runs when they vary in concurrency or lengths."""
    for entry in test.get("results", ()):
        if entry["kind"] == "matrix":
            cells = []
            for cand in entry["payload"].get("candidates") or ():
                params, s = cand.get("params") or {}, cand.get("summary") or {}
                cells.append(
                    {
                        "concurrency": params.get("concurrency", params.get("c")),
                        "prompt": params.get("prompt_tokens", params.get("in")),
                        "output": params.get("output_tokens", params.get("out")),
                        "rps": s.get("request_throughput"),
                        "ttft_p95": (s.get("ttft") or {}).get("p95"),
                    }
                )
            return cells
    cells = []
    for entry in _loads(test):
        config = entry["payload"].get("config") or {}
        schedule = config.get("schedule") or {}
        workload = config.get("workload") or {}
        if schedule.get("kind") != "closed":
            continue
        cells.append(
            {
                "concurrency": schedule.get("concurrency"),
                "prompt": workload.get("prompt_tokens"),
                "output": config.get("max_tokens"),
                "rps": entry["payload"]["summary"].get("request_throughput"),
                "ttft_p95": entry["payload"]["summary"]["ttft"].get("p95"),
            }
        )
    keys = {(c["concurrency"], c["prompt"], c["output"]) for c in cells}
    concurrencies = {c["concurrency"] for c in cells}
    lengths = {(c["prompt"], c["output"]) for c in cells}
    if len(keys) >= 4 and len(concurrencies) >= 2 and len(lengths) >= 2:
        return cells
    return []


def matrix_figure(cells: Sequence[dict[str, Any]]) -> str:
    """Heatmap of request throughput over concurrency x (prompt, output) lengths."""
    xs = sorted({c["concurrency"] for c in cells}, key=lambda v: (v is None, v))
    ys = sorted({(c["prompt"], c["output"]) for c in cells}, key=str)
    z: list[list[float | None]] = [[None] * len(xs) for _ in ys]
    text: list[list[str]] = [[""] * len(xs) for _ in ys]
    for c in cells:
        i, j = ys.index((c["prompt"], c["output"])), xs.index(c["concurrency"])
        z[i][j] = c["rps"]
        ttft = "-" if c["ttft_p95"] is None else f"{c['ttft_p95'] * 1e3:.0f} ms"
        text[i][j] = f"{c['rps'] or 0:.1f} req/s<br>TTFT p95 {ttft}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"c={x}" for x in xs],
            y=[("" if p is None else f"in={p} ") + f"out={o}" for p, o in ys],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar={"title": "req/s"},
        )
    )
    fig.update_layout(
        title="configuration matrix: request throughput",
        xaxis_title="concurrency",
        yaxis_title="prompt / output tokens",
    )
    return _figure_html(fig, height=max(300, 120 + 70 * len(ys)))


def boundary_table(payload: dict[str, Any]) -> str:
    """The boundary search's answer and every probe."""
    failure = payload.get("first_failure") or {}
    head = _table(
        ["dimension", "safe value", "first failure", "class", "probes", "recoverable", "note"],
        [
            [
                payload.get("dimension"),
                payload.get("safe_value"),
                failure.get("value"),
                failure.get("outcome"),
                len(payload.get("probes") or ()),
                payload.get("recoverable"),
                payload.get("stopped_reason"),
            ]
        ],
        numeric=(1, 2, 4),
    )
    probes = _table(
        ["value", "outcome", "seconds", "canary", "detail"],
        [
            [p["value"], p["outcome"], f"{p['seconds']:.1f}", p.get("recovered"), p.get("detail")]
            for p in payload.get("probes") or ()
        ],
        numeric=(0, 2),
    )
    return head + "<details><summary>probes</summary>" + probes + "</details>"


def _verdict_table(test: dict[str, Any]) -> str:
    """The test's verdicts: name, PASS / FAIL / NOT JUDGED (reason), measured vs limit, source."""
    verdicts = summary.verdicts_of(test)
    if not verdicts:
        return ""
    rows = "".join(
        f"<tr><td>{_e(v.name)}</td><td class='{v.status.name}'>{_e(v.label)}</td>"
        f"<td>{_e(v.message)}</td><td>{_e(v.source or '-')}</td></tr>"
        for v in verdicts
    )
    head = "<tr><th>verdict</th><th></th><th>measured vs limit</th><th>limit from</th></tr>"
    return f"<table>{head}{rows}</table>"


def _load_table(test: dict[str, Any]) -> str:
    """Per load run: requests, failures, TTFT/E2E/ITL percentiles with sample counts, req/s."""
    rows = []
    for entry in _loads(test):
        s = entry["payload"]["summary"]
        rows.append(
            [
                entry["index"],
                s["requests"],
                s["failed"],
                f"{summary.ms(s['ttft']['p50'])} / {summary.ms(s['ttft']['p95'])} / "
                f"{summary.ms(s['ttft']['p99'])} (n={s['ttft']['count']})",
                f"{summary.ms(s['e2e']['p95'])} (n={s['e2e']['count']})",
                f"{summary.ms(s['itl_token']['p95'])} (n={s['itl_token']['count']})",
                f"{s['request_throughput'] or 0:.2f}",
                f"{s['output_token_throughput'] or 0:.0f}",
                "CLIENT-BOUND" if entry["payload"].get("client_bound") else "ok",
            ]
        )
    if not rows:
        return ""
    return _table(
        [
            "run",
            "requests",
            "failed",
            "TTFT p50/p95/p99 ms",
            "E2E p95 ms",
            "ITL p95 ms",
            "req/s",
            "tok/s",
            "client",
        ],
        rows,
        numeric=(0, 1, 2, 6, 7),
    )


def _comparison_table(test: dict[str, Any], baseline: dict[str, Any]) -> str:
    """This run vs the baseline, per load run: TTFT p95, E2E p95, req/s and the change."""
    rows = []
    base_loads = {e["index"]: e for e in _loads(baseline)}
    for entry in _loads(test):
        old = base_loads.get(entry["index"])
        if old is None:
            continue
        for label, path, higher_is_better in (
            ("TTFT p95 ms", ("ttft", "p95"), False),
            ("E2E p95 ms", ("e2e", "p95"), False),
            ("req/s", ("request_throughput",), True),
        ):
            new_v, old_v = (
                _dig(entry["payload"]["summary"], path),
                _dig(old["payload"]["summary"], path),
            )
            scale = 1.0 if higher_is_better else 1e3
            change = None
            if new_v is not None and old_v:
                change = (new_v - old_v) / old_v
            rows.append(
                [
                    entry["index"],
                    label,
                    None if old_v is None else f"{old_v * scale:.2f}",
                    None if new_v is None else f"{new_v * scale:.2f}",
                    "-" if change is None else f"{change:+.1%}",
                ]
            )
    if not rows:
        return ""
    return "<h4>this run vs baseline</h4>" + _table(
        ["run", "metric", "baseline", "this run", "change"], rows, numeric=(0, 2, 3, 4)
    )


def _dig(data: dict[str, Any], path: Sequence[str]) -> float | None:
    """A nested number, None when missing."""
    value: Any = data
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) else None


def _target_line(target: dict[str, Any] | None) -> str:
    """engine version, model, args."""
    if not target:
        return ""
    args = f", args {target.get('args_text')}" if target.get("args_text") else ""
    return f"{target.get('description')}{args}"


def test_section(test: dict[str, Any], baseline: dict[str, Any] | None = None) -> str:
    """Everything about one test: outcome, target, verdicts, tables and plots."""
    colour = _OUTCOME_COLOURS.get(test["outcome"], "#6e7781")
    parts = [
        f'<div class="test" id="{_e(test["nodeid"])}"><h3>{_e(test["nodeid"])} '
        f'<span class="badge" style="background:{colour}">{_e(test["outcome"])}</span></h3>',
        f'<div class="note">suite {_e(test["suite"])}, {test["duration_s"]:.1f} s'
        + (f", worker {_e(test['worker'])}" if test.get("worker") else "")
        + (f"; target {_e(_target_line(test.get('target')))}" if test.get("target") else "")
        + "</div>",
    ]
    if test.get("message") and test["outcome"] != "passed":
        parts.append(f"<pre>{_e(test['message'])}</pre>")
    parts.append(_verdict_table(test))
    plots: list[str] = []
    by_kind: dict[str, list[Entry]] = {}
    for entry in test.get("results", ()):
        by_kind.setdefault(entry["kind"], []).append(entry)
    for name, entries in by_kind.items():
        known = KINDS.get(name)
        if known is None:
            continue
        blocks, figures = known.html(test, entries, baseline)
        parts.extend(blocks)
        plots.extend(figures)
    if plots:
        parts.append('<div class="plots">' + "".join(f"<div>{p}</div>" for p in plots) + "</div>")
    parts.append("</div>")
    return "".join(parts)


def load_parts(
    test: dict[str, Any], entries: Sequence[Entry], baseline: dict[str, Any] | None
) -> HtmlParts:
    """The load runs of a test: their table, the comparison with the baseline, latency plots,
    and a matrix heatmap when the runs vary in concurrency and lengths."""
    parts = [_load_table(test)]
    if baseline is not None:
        parts.append(_comparison_table(test, baseline))
    plots = latency_figures(test, baseline)
    if not any(e["kind"] == "matrix" for e in test.get("results", ())):
        plots += matrix_plots(test)
    return parts, plots


def burst_parts(entries: Sequence[Entry]) -> HtmlParts:
    """Each burst's headline and its timeline figure."""
    parts, plots = [], []
    for entry in entries:
        payload = entry["payload"]
        shape = (payload.get("shape") or {}).get("name", "burst")
        parts.append(f"<p>{_e(payload.get('headline'))}</p>")
        plots.append(burst_figure(payload, f"burst {entry['index']}: {shape}"))
    return parts, plots


def matrix_plots(test: dict[str, Any]) -> list[str]:
    """The matrix heatmap of a test (from its matrix, else its varied load runs), if any."""
    cells = matrix_cells(test)
    return [matrix_figure(cells)] if cells else []


def text_parts(kind: str, entries: Sequence[Entry]) -> list[str]:
    """Each result's table or text as a preformatted block (else its scalar fields)."""
    parts = []
    for entry in entries:
        payload = entry["payload"]
        title = payload.get("title") if kind == "note" else kind
        text = payload.get("table") or payload.get("text")
        if text:
            parts.append(f"<h4>{_e(title)}</h4><pre>{_e(text)}</pre>")
        else:
            parts.append(f"<h4>{_e(title)}</h4>" + _key_value_table(payload))
    return parts


def _key_value_table(payload: dict[str, Any]) -> str:
    """The payload's scalar fields as a two-column table."""
    rows = [[k, v] for k, v in payload.items() if not isinstance(v, dict | list)]
    return _table(["field", "value"], rows)


def environment_section(documents: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """Machine and run details, one column per document."""

    def row(name: str, getter: Any) -> list[Any]:
        return [name, *(getter(d) for d in documents)]

    def gpus(doc: dict[str, Any]) -> str:
        listed = doc["machine"].get("gpus") or []
        if not listed:
            return f"none ({doc['machine'].get('gpu_unavailable_reason') or 'no GPU'})"
        return "; ".join(
            f"{g['name']} {g['uuid']}" + ("" if g.get("selected") else " (unused)") for g in listed
        )

    def targets(doc: dict[str, Any]) -> str:
        seen = {_target_line(t.get("target")) for t in doc["tests"] if t.get("target")}
        return "; ".join(sorted(seen)) or "-"

    rows = [
        row("host", lambda d: d["machine"].get("hostname")),
        row("OS", lambda d: d["machine"].get("os")),
        row(
            "CPU",
            lambda d: (
                f"{(d['machine'].get('cpu') or {}).get('model')} "
                f"({(d['machine'].get('cpu') or {}).get('logical_cores')} logical cores)"
            ),
        ),
        row("memory", lambda d: f"{(d['machine'].get('memory_total_bytes') or 0) / 2**30:.1f} GiB"),
        row("GPUs", gpus),
        row(
            "driver / CUDA",
            lambda d: (
                f"{d['machine'].get('driver_version') or '-'} / "
                f"{d['machine'].get('cuda_version') or '-'}"
            ),
        ),
        row("targets", targets),
        row(
            "Python / pytest / plugin",
            lambda d: (
                f"{d['machine'].get('python')} / "
                f"{d['run'].get('pytest_version')} / {d['run'].get('plugin_version')}"
            ),
        ),
        row("started / status", lambda d: f"{d['run'].get('started')} / {d['run'].get('status')}"),
        row("arguments", lambda d: " ".join(d["run"].get("args") or [])),
    ]
    extra_keys = sorted({k for d in documents for k in (d["machine"].get("extra") or {})})
    rows += [row(k, lambda d, k=k: (d["machine"].get("extra") or {}).get(k)) for k in extra_keys]
    return "<h2>environment</h2>" + _table(["", *labels], rows)


def render_page(
    documents: Sequence[dict[str, Any]],
    *,
    baseline: dict[str, Any] | None = None,
    title: str = "pytest-gpuinfer report",
) -> str:
    """The whole page for one run (several reports merged) and, optionally, a baseline run."""
    current = summary.merge(documents)
    base_tests = {t["nodeid"]: t for t in (baseline or {}).get("tests", ())}
    envs = [current] + ([baseline] if baseline is not None else [])
    labels = ["this run"] + (["baseline"] if baseline is not None else [])
    rows = summary.suite_rows(current["tests"])
    suite_table = _table(
        ["suite", "tests", "outcomes", "verdicts", "key metrics"],
        [[r.suite, r.tests, r.outcome_text(), r.verdict_text(), r.metrics_text()] for r in rows],
        numeric=(1,),
    )
    tests_table = _table(
        ["test", "outcome", "key figures"],
        [[t["nodeid"], t["outcome"], "; ".join(summary.key_figures(t))] for t in current["tests"]],
    )
    sections = [test_section(t, base_tests.get(t["nodeid"])) for t in current["tests"]]
    compared = (
        f"<p class='note'>compared with a baseline run started {_e(baseline['run'].get('started'))}"
        f" ({len(base_tests)} tests; dashed lines are the baseline)</p>"
        if baseline is not None
        else ""
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{_e(title)}</h1>"
        f"<p class='note'>schema {_e(current.get('schema_version'))}, "
        f"{len(current['tests'])} tests, status {_e(current['run'].get('status'))}</p>"
        f"{compared}<h2>summary</h2>{suite_table}{tests_table}"
        f"{environment_section(envs, labels)}<h2>tests</h2>{''.join(sections)}</body></html>"
    )


def write_page(
    documents: Sequence[dict[str, Any]],
    out: Path,
    *,
    baseline: dict[str, Any] | None = None,
) -> Path:
    """Render and write the page atomically; returns its path."""
    write_atomically(out, render_page(documents, baseline=baseline))
    return out
