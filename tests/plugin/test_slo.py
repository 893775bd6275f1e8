"""Tests for pytest_gpuinfer.metrics.slo: the SLO expression language and verdicts."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.slo import (
    GRAMMAR,
    SLO,
    SLOSyntaxError,
    evaluate,
    evaluate_all,
    is_per_request,
    meets,
    parse_slo,
    parse_slos,
    unjudged_latency,
)
from pytest_gpuinfer.metrics.stats import summarize

approx = pytest.approx


@pytest.mark.parametrize(
    ("text", "metric", "stat", "op", "limit"),
    [
        ("ttft_p95<500ms", "ttft", "p95", "<", 0.5),
        ("itl_p99<=50ms", "itl", "p99", "<=", 0.05),
        ("e2e_p50<2s", "e2e", "p50", "<", 2.0),
        ("error_rate<0.1%", "error_rate", None, "<", 0.001),
        ("error_rate<=0.001", "error_rate", None, "<=", 0.001),
        ("throughput>=20rps", "throughput", None, ">=", 20.0),
        ("throughput>=1200rpm", "throughput", None, ">=", 20.0),
        ("tpot_mean<30ms", "tpot", "mean", "<", 0.03),
        ("token_throughput>=100tok/s", "token_throughput", None, ">=", 100.0),
        ("goodput>=5rps", "goodput", None, ">=", 5.0),
        ("goodput>5req/s", "goodput", None, ">", 5.0),
        ("ttft_p99.9<1s", "ttft", "p99.9", "<", 1.0),
        ("  TTFT_P95 < 500 ms ", "ttft", "p95", "<", 0.5),
        ("itl_chunk_max<250us", "itl_chunk", "max", "<", 0.00025),
        ("itl_token_min>=0.5µs", "itl_token", "min", ">=", 5e-7),
        ("queue_p99<1e2ms", "queue", "p99", "<", 0.1),
        ("e2e_p100<=3s", "e2e", "p100", "<=", 3.0),
        ("ttft_p95.0<1s", "ttft", "p95", "<", 1.0),
        ("ttft_p0>0s", "ttft", "p0", ">", 0.0),
    ],
)
def test_parse_valid(text: str, metric: str, stat: str | None, op: str, limit: float) -> None:
    slo = parse_slo(text)
    assert (slo.metric, slo.stat, slo.op) == (metric, stat, op)
    assert slo.limit == approx(limit, rel=1e-12)
    assert slo.text == text.strip()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty expression"),
        ("ttft_p95", "no comparison operator"),
        ("ttft_p95=500ms", "unsupported operator '='"),
        ("ttft_p95==500ms", "unsupported operator '=='"),
        ("ttft_p95!=500ms", "unsupported operator '!='"),
        ("ttft_p95=<500ms", "unsupported operator '=<'"),
        ("ttft_p95<500ms<1s", "more than one operator"),
        ("ttfb_p95<500ms", "unknown metric 'ttfb'"),
        ("latency<500ms", "unknown metric 'latency'"),
        ("<500ms", "no metric"),
        ("ttft_p95<", "no limit"),
        ("ttft_q95<500ms", "unknown statistic 'q95'"),
        ("ttft_<500ms", "unknown statistic ''"),
        ("ttft_p999<500ms", "percentile 'p999' is over 100; did you mean p99.9?"),
        ("ttft_p101<500ms", "percentile 'p101' is over 100"),
        ("ttft<500ms", "ttft needs a statistic"),
        ("error_rate_p95<1%", "error_rate takes no statistic"),
        ("throughput_mean>1rps", "throughput takes no statistic"),
        ("ttft_p95<500", "missing unit after '500'"),
        ("throughput>=20", "missing unit after '20'"),
        ("ttft_p95<fast", "bad number 'fast'"),
        ("ttft_p95<5.5.5ms", "bad number '5.5.5ms'"),
        ("ttft_p95<1e999s", "bad number '1e999' (not finite)"),
        ("ttft_p95<-5ms", "limit '-5' is negative"),
        ("ttft_p95<500parsecs", "unknown unit 'parsecs'"),
        ("throughput<5ms", "wrong unit 'ms' for throughput"),
        ("ttft_p95<5rps", "wrong unit 'rps' for ttft"),
        ("token_throughput>=100rps", "wrong unit 'rps' for token_throughput"),
        ("goodput>=100tok/s", "wrong unit 'tok/s' for goodput"),
        ("error_rate<5ms", "wrong unit 'ms' for error_rate"),
        ("error_rate<5", "bare error_rate '5' is over 1"),
        ("error_rate<150%", "error_rate limit '150%' is over 100%"),
    ],
)
def test_parse_errors_name_the_bad_part(text: str, problem: str) -> None:
    with pytest.raises(SLOSyntaxError) as info:
        parse_slo(text)
    message = str(info.value)
    assert problem in message
    assert repr(text) in message
    assert GRAMMAR in message
    assert problem in info.value.problem
    assert isinstance(info.value, ValueError)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        parse_slo(5)  # type: ignore[arg-type]


def test_parse_slos_splits_commas_and_skips_blanks() -> None:
    slos = parse_slos(["ttft_p95<500ms, itl_p99<50ms", "error_rate<1%,", "  "])
    assert [s.name for s in slos] == ["ttft_p95", "itl_p99", "error_rate"]
    assert parse_slos("throughput>=2rps")[0].limit == 2.0
    with pytest.raises(SLOSyntaxError, match="unknown metric"):
        parse_slos(["ttft_p95<500ms, nope<1s"])


_UNIT_CHOICES = {
    "latency": ["us", "ms", "s"],
    "error_rate": ["%", ""],
    "throughput": ["rps", "req/s", "rpm"],
    "goodput": ["rps", "req/min"],
    "token_throughput": ["tok/s", "tps", "tok/min"],
}
_LATENCY = ["ttft", "tpot", "itl", "itl_chunk", "itl_token", "e2e", "queue"]


@st.composite
def slo_texts(draw: st.DrawFn) -> str:
    """Valid SLO expressions in any of the accepted spellings."""
    metric = draw(st.sampled_from([*_LATENCY, *_UNIT_CHOICES.keys() - {"latency"}]))
    op = draw(st.sampled_from(["<", "<=", ">", ">="]))
    if metric in _LATENCY:
        q = draw(st.one_of(st.integers(0, 100), st.sampled_from([99.9, 99.99, 12.5])))
        stat = draw(st.sampled_from([f"p{q}", "mean", "min", "max"]))
        lhs = f"{metric}_{stat}"
        unit = draw(st.sampled_from(_UNIT_CHOICES["latency"]))
    else:
        lhs = metric
        unit = draw(st.sampled_from(_UNIT_CHOICES[metric]))
    top = 1.0 if metric == "error_rate" and unit == "" else 100.0 if unit == "%" else 1e6
    value = draw(st.floats(0, top, allow_nan=False, allow_infinity=False))
    space = draw(st.sampled_from(["", " "]))
    return f"{lhs}{space}{op}{space}{value!r}{space}{unit}"


@settings(max_examples=150, deadline=None)
@given(slo_texts())
def test_canonical_round_trip(text: str) -> None:
    slo = parse_slo(text)
    again = parse_slo(slo.canonical())
    assert (again.metric, again.stat, again.op, again.limit) == (
        slo.metric,
        slo.stat,
        slo.op,
        slo.limit,
    )


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from([("ms", 1e3), ("s", 1.0), ("us", 1e6)]))
def test_latency_units_normalise_to_seconds(value: int, unit: tuple[str, float]) -> None:
    assert parse_slo(f"ttft_p95<{value}{unit[0]}").limit == value / unit[1]


def record(i: float, ttft: float, tokens: int = 2, tpot: float = 0.01) -> RequestRecord:
    """A completed request scheduled at ``i`` with the given TTFT and TPOT."""
    chunks = [i + ttft + k * tpot for k in range(tokens)]
    return RequestRecord(
        index=int(i),
        scheduled=i,
        sent=i,
        first_token=chunks[0],
        end=chunks[-1],
        chunk_times=chunks,
        chunk_tokens=[1] * tokens,
        completion_tokens=tokens,
    )


class TestEvaluate:
    def test_failing_latency_message(self) -> None:
        summary = summarize([record(float(i), 0.6123) for i in range(300)])
        v = evaluate(parse_slo("ttft_p95<500ms"), summary)
        assert not v.passed
        assert v.count == 300
        assert v.measured == approx(0.6123)
        assert v.message == "ttft_p95 = 612.3 ms > limit 500 ms (n=300)"

    def test_passing_latency_message(self) -> None:
        summary = summarize([record(float(i), 0.25) for i in range(300)])
        v = evaluate(parse_slo("ttft_p95 <= 500ms"), summary)
        assert v.passed
        assert v.message == "ttft_p95 = 250 ms < limit 500 ms (n=300)"

    def test_too_few_samples_is_not_judged_either_way(self) -> None:
        summary = summarize([record(float(i), 0.1) for i in range(37)])
        v = evaluate(parse_slo("ttft_p99<500ms"), summary)
        assert v.label == "NOT JUDGED (too few samples)" and not v.passed and not v.failed
        assert v.message == (
            "ttft_p99 = 100 ms < limit 500 ms (only 37 samples: p99 needs 100); "
            "run more requests to judge it"
        )
        over = evaluate(parse_slo("ttft_p99<50ms"), summary)
        assert not over.judged and over.measured == approx(0.1)
        enough = evaluate(parse_slo("ttft_p90<500ms"), summary)
        assert enough.passed and enough.message.endswith("(n=37)")

    def test_latency_without_an_slo_is_not_judged_with_its_figures(self) -> None:
        summary = summarize([record(float(i), 0.25) for i in range(40)])
        (verdict,) = unjudged_latency(parse_slos(["error_rate<1%"]), summary)
        assert verdict.label == "NOT JUDGED (no limit)"
        assert verdict.message.startswith("no latency SLO applies to this run: TTFT p95 250.0 ms")
        assert unjudged_latency(parse_slos(["ttft_p95<1s"]), summary) == []

    def test_verdicts_say_where_their_limit_came_from(self) -> None:
        slo = parse_slo("ttft_p95<500ms").sourced("@pytest.mark.slo")
        v = evaluate(slo, summarize([record(float(i), 0.6) for i in range(40)]))
        assert (v.status.value, v.limit, v.unit, v.source) == ("FAIL", 0.5, "s", slo.source)
        assert slo == parse_slo("ttft_p95<500ms")  # where it came from is not its value

    def test_any_percentile(self) -> None:
        summary = summarize([record(float(i), 0.001 * (i + 1)) for i in range(100)])
        v = evaluate(parse_slo("ttft_p12.5<=100ms"), summary)
        assert v.measured == approx(0.001 + 0.125 * 99 * 0.001)

    def test_error_rate_and_throughput(self) -> None:
        recs = [record(float(i), 0.1) for i in range(199)]
        recs.append(RequestRecord(index=199, scheduled=199.0, end=199.5, error="http"))
        summary = summarize(recs)
        err, thr, tok = evaluate_all(
            parse_slos(["error_rate<0.1%, throughput>=2rps, token_throughput>=0.5tok/s"]), summary
        )
        assert not err.passed
        assert err.measured == approx(0.005)
        assert err.message == "error_rate = 0.5% > limit 0.1% (n=200)"
        assert not thr.passed
        assert thr.message == f"throughput = {thr.measured:.4g} req/s < limit 2 req/s (n=199)"
        assert tok.passed
        assert tok.message.endswith("tok/s > limit 0.5 tok/s (n=199)")

    def test_goodput(self) -> None:
        recs = [record(float(i), 0.1 if i % 2 else 0.9) for i in range(100)]
        summary = summarize(recs, slos=parse_slos(["ttft_p95<500ms"]))
        v = evaluate(parse_slo("goodput>=0.4rps"), summary)
        assert v.measured == approx(50 / (99 + 0.11))
        assert v.passed

    def test_goodput_without_per_request_slos_fails(self) -> None:
        v = evaluate(parse_slo("goodput>=1rps"), summarize([record(0.0, 0.1)]))
        assert not v.passed
        assert "no per-request SLOs" in v.message

    def test_no_samples_fails(self) -> None:
        failed = RequestRecord(index=0, scheduled=0.0, end=1.0, error="connect")
        v = evaluate(parse_slo("ttft_p95<500ms"), summarize([failed]))
        assert not v.passed
        assert math.isnan(v.measured)
        assert v.message == "ttft_p95: no samples (n=0)"


class TestPerRequest:
    def test_is_per_request(self) -> None:
        assert is_per_request(parse_slo("ttft_p95<1s"))
        assert is_per_request(parse_slo("itl_p99<1s"))
        assert not is_per_request(parse_slo("error_rate<1%"))
        assert not is_per_request(parse_slo("throughput>1rps"))

    def test_meets_uses_the_requests_own_value(self) -> None:
        slo = parse_slo("ttft_p95<500ms")
        assert meets(slo, record(0.0, 0.4))
        assert not meets(slo, record(0.0, 0.5))
        assert not meets(slo, RequestRecord(index=0, scheduled=0.0, end=0.1, error="http"))

    def test_one_token_reply_has_no_tpot_and_meets(self) -> None:
        assert meets(parse_slo("tpot_p99<1ms"), record(0.0, 0.1, tokens=1))
        assert not meets(parse_slo("tpot_p99<1ms"), record(0.0, 0.1, tokens=3, tpot=0.01))

    def test_meets_rejects_whole_run_slos(self) -> None:
        with pytest.raises(ValueError, match="not a per-request SLO"):
            meets(parse_slo("error_rate<1%"), record(0.0, 0.1))


def test_slo_is_frozen_value() -> None:
    a, b = parse_slo("ttft_p95<500ms"), parse_slo("ttft_p95<500ms")
    assert a == b
    assert hash(a) == hash(b)
    assert a.name == "ttft_p95"
    assert isinstance(a, SLO)
