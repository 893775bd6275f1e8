"""Tests for metrics.stats: metric definitions, percentiles, summaries, regressions."""

from __future__ import annotations

import itertools
import json
import math
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.slo import parse_slos
from pytest_gpuinfer.metrics.stats import (
    PERCENTILES,
    Distribution,
    Summary,
    compare,
    distribution,
    min_samples,
    request_value,
    summarize,
)

approx = pytest.approx


def streamed(
    index: int,
    scheduled: float,
    chunks: list[float],
    tokens: list[int] | None = None,
    *,
    sent: float | None = None,
    completion_tokens: int | None = None,
    prompt_tokens: int | None = None,
) -> RequestRecord:
    """A completed streamed request whose first chunk is its first token and last is its end."""
    tokens = tokens if tokens is not None else [1] * len(chunks)
    return RequestRecord(
        index=index,
        scheduled=scheduled,
        sent=scheduled if sent is None else sent,
        first_byte=chunks[0],
        first_token=chunks[0],
        end=chunks[-1],
        chunk_times=list(chunks),
        chunk_tokens=list(tokens),
        status=200,
        completion_tokens=sum(tokens) if completion_tokens is None else completion_tokens,
        prompt_tokens=prompt_tokens,
        finish_reason="length",
    )


def failed(index: int, scheduled: float, end: float | None, error: str | None) -> RequestRecord:
    """A request that did not complete."""
    return RequestRecord(index=index, scheduled=scheduled, end=end, error=error)


# A request scheduled at 10.0, sent at 10.1 (client queueing), first token at 10.5, then a chunk of
# one token at 10.6 and a chunk of three tokens at 11.2: 5 tokens in all.
A = streamed(0, 10.0, [10.5, 10.6, 11.2], [1, 1, 3], sent=10.1, prompt_tokens=7)
B = failed(1, 10.2, 12.0, "timeout")
C = streamed(2, 11.0, [11.3], [1], prompt_tokens=4)


class TestSummaryDefinitions:
    def test_counts_and_rates(self) -> None:
        s = summarize([A, B, C])
        assert (s.requests, s.completed, s.failed) == (3, 2, 1)
        assert s.error_rate == approx(1 / 3)
        assert s.errors == {"timeout": 1}
        # window: first scheduled (10.0) to last end, the failed request's 12.0
        assert s.duration_s == approx(2.0)
        assert s.request_throughput == approx(1.0)
        assert s.output_token_throughput == approx(6 / 2.0)
        assert (s.prompt_tokens, s.completion_tokens) == (11, 6)
        assert s.goodput is None

    def test_ttft_e2e_and_queue_start_at_scheduled_time(self) -> None:
        s = summarize([A, B, C])
        assert s.ttft.count == 2
        assert sorted(s.ttft._values) == approx([0.3, 0.5])
        assert sorted(s.e2e._values) == approx([0.3, 1.2])
        assert sorted(s.queue._values) == approx([0.0, 0.1])

    def test_tpot_uses_tokens_after_the_first(self) -> None:
        s = summarize([A, C])
        # only A has >= 2 tokens: (E2E 1.2 - TTFT 0.5) / (5 - 1)
        assert s.tpot.count == 1
        assert s.tpot.mean == approx(0.175)

    def test_itl_per_chunk(self) -> None:
        s = summarize([A, C])
        assert s.itl_chunk.count == 2
        assert sorted(s.itl_chunk._values) == approx([0.1, 0.6])
        assert s.itl_chunk.mean == approx(0.35)

    def test_itl_per_token_is_token_weighted(self) -> None:
        s = summarize([A, C])
        # the 0.6 s gap before a 3-token chunk gives three samples of 0.2 s
        assert s.itl_token.count == 4
        assert s.itl_token.mean == approx((0.1 + 3 * 0.2) / 4)
        assert s.itl_token.min == approx(0.1)
        assert s.itl_token.p50 == approx(0.2)
        assert s.itl_token.percentile(0) == approx(0.1)
        assert s.metric("itl") is s.itl_token

    def test_itl_gap_across_two_records_is_not_counted(self) -> None:
        r1 = streamed(0, 0.0, [1.0, 1.5])
        r2 = streamed(1, 0.0, [5.0, 5.25])
        s = summarize([r1, r2])
        assert s.itl_chunk.count == 2
        assert sorted(s.itl_chunk._values) == approx([0.25, 0.5])

    def test_tpot_follows_usage_tokens_not_chunk_count(self) -> None:
        r = streamed(0, 0.0, [1.0, 2.0], [1, 1], completion_tokens=11)
        assert summarize([r]).tpot.mean == approx(0.1)

    def test_zero_token_chunk_counts_as_one(self) -> None:
        r = streamed(0, 0.0, [1.0, 1.4], [1, 0], completion_tokens=2)
        s = summarize([r])
        assert s.itl_token.count == 1
        assert s.itl_token.mean == approx(0.4)

    def test_failed_requests_stay_out_of_latencies(self) -> None:
        s = summarize([B])
        assert s.error_rate == 1.0
        assert s.ttft.count == s.e2e.count == s.queue.count == 0
        assert math.isnan(s.ttft.p95)
        assert s.request_throughput == 0.0

    def test_unfinished_request_is_failed_as_incomplete(self) -> None:
        s = summarize([A, failed(1, 10.5, None, None)])
        assert s.errors == {"incomplete": 1}
        assert s.failed == 1

    def test_no_records(self) -> None:
        s = summarize([])
        assert s.requests == 0
        assert math.isnan(s.error_rate)
        assert math.isnan(s.request_throughput)
        json.dumps(s.to_dict(), allow_nan=False)


class TestWarmup:
    records: ClassVar[list[RequestRecord]] = [
        streamed(i, float(i), [i + 0.5, i + 0.75]) for i in range(4)
    ]

    def test_excludes_records_scheduled_inside_warmup(self) -> None:
        s = summarize(self.records, warmup_s=1.5)
        assert s.requests == 2
        assert s.warmup_excluded == 2
        # window starts at the first measured scheduled time (2.0), ends at the last end (3.75)
        assert s.duration_s == approx(1.75)

    def test_boundary_record_is_kept(self) -> None:
        assert summarize(self.records, warmup_s=1.0).requests == 3

    def test_negative_warmup_rejected(self) -> None:
        with pytest.raises(ValueError, match="warmup_s"):
            summarize(self.records, warmup_s=-1)


class TestGoodput:
    def test_counts_requests_meeting_every_per_request_slo(self) -> None:
        recs = [
            streamed(0, 0.0, [0.1, 0.2, 0.3]),  # ttft 100 ms, tpot 100 ms
            streamed(1, 0.0, [0.3, 0.35, 0.4]),  # ttft 300 ms, tpot 50 ms
            streamed(2, 0.0, [0.6, 0.65, 2.0]),  # ttft 600 ms
            failed(3, 0.0, 1.0, "http"),
        ]
        s = summarize(recs, slos=parse_slos(["ttft_p95<500ms, tpot_p99<80ms, error_rate<50%"]))
        # only record 1 meets both; the window is 2.0 s
        assert s.goodput == approx(0.5)
        assert s.goodput_slos == ("ttft_p95<500ms", "tpot_p99<80ms")
        assert s.metric("goodput") == approx(0.5)

    def test_none_without_per_request_slos(self) -> None:
        s = summarize([A], slos=parse_slos(["error_rate<1%"]))
        assert s.goodput is None
        assert math.isnan(s.metric("goodput"))  # type: ignore[arg-type]

    def test_request_value_takes_the_stat_over_its_own_gaps(self) -> None:
        r = streamed(0, 0.0, [1.0, 1.1, 1.2, 2.2])
        assert request_value(r, "itl_chunk", "max") == approx(1.0)
        assert request_value(r, "itl_chunk", "p50") == approx(0.1)
        assert request_value(r, "itl_chunk", "mean") == approx(0.4)
        assert request_value(r, "ttft", "p99") == approx(1.0)
        assert request_value(streamed(1, 0.0, [1.0]), "tpot", "p99") is None


class TestDistribution:
    def test_exact_values(self) -> None:
        d = distribution([4.0, 1.0, 3.0, 2.0])
        assert (d.count, d.mean, d.min, d.max) == (4, 2.5, 1.0, 4.0)
        assert d.p50 == 2.5
        assert d.p90 == approx(3.7)
        assert d.percentile(25) == approx(1.75)
        assert d.percentile(100) == 4.0

    def test_empty(self) -> None:
        d = distribution([])
        assert d.count == 0
        assert math.isnan(d.mean)
        assert math.isnan(d.p99)
        assert math.isnan(d.percentile(42))
        assert d.to_dict() == {
            "count": 0, "mean": None, "min": None, "max": None,
            "p50": None, "p90": None, "p95": None, "p99": None, "p999": None,
        }  # fmt: skip

    def test_generator_input(self) -> None:
        assert distribution(x / 10 for x in range(11)).p50 == approx(0.5)

    def test_nan_rejected(self) -> None:
        with pytest.raises(ValueError, match="NaN"):
            distribution([1.0, float("nan")])

    def test_bad_percentile_rejected(self) -> None:
        with pytest.raises(ValueError, match=r"0\.\.100"):
            distribution([1.0]).percentile(101)

    def test_samples_not_in_repr_or_eq(self) -> None:
        a, b = distribution([1.0, 2.0]), distribution([1.0, 2.0])
        assert a == b
        assert "_values" not in repr(a)

    def test_stat_by_name(self) -> None:
        d = distribution(range(1, 1001))
        assert d.stat("p99.9") == d.p999 == approx(np.percentile(range(1, 1001), 99.9))
        assert d.stat("mean") == 500.5
        with pytest.raises(ValueError, match="unknown statistic"):
            d.stat("median")

    def test_round_trip_through_dict(self) -> None:
        d = distribution([0.1, 0.2, 0.3])
        back = Distribution.from_dict(json.loads(json.dumps(d.to_dict())))
        assert back == d
        assert back.percentile(95) == d.p95
        with pytest.raises(ValueError, match="not kept"):
            back.percentile(42)

    def test_min_samples(self) -> None:
        assert [min_samples(q) for q in PERCENTILES] == [2, 10, 20, 100, 1000]
        assert min_samples(100) == 1


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=50), st.lists(st.floats(0, 100), min_size=2))
def test_percentiles_monotone_and_bounded(values: list[float], qs: list[float]) -> None:
    d = distribution(values)
    got = [d.percentile(q) for q in sorted(qs)]
    assert all(a <= b for a, b in itertools.pairwise(got))
    assert all(d.min <= p <= d.max for p in got)
    assert d.p50 <= d.p90 <= d.p95 <= d.p99 <= d.p999


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=50), st.floats(0, 100))
def test_unweighted_matches_numpy(values: list[float], q: float) -> None:
    assert distribution(values).percentile(q) == np.percentile(values, q)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(finite, st.integers(0, 5)), min_size=1, max_size=30).filter(
        lambda pairs: any(w for _, w in pairs)
    ),
    st.floats(0, 100),
)
def test_weighted_matches_numpy_on_expanded(pairs: list[tuple[float, int]], q: float) -> None:
    values = [v for v, _ in pairs]
    weights = [w for _, w in pairs]
    expanded = np.repeat(values, weights)
    d = distribution(values, weights)
    assert d.count == expanded.size
    assert d.percentile(q) == approx(np.percentile(expanded, q), rel=1e-9, abs=1e-9)
    assert d.mean == approx(float(np.mean(expanded)), rel=1e-9, abs=1e-6)
    assert d.p99 == approx(np.percentile(expanded, 99), rel=1e-9, abs=1e-9)


class TestSummaryAccess:
    summary = summarize([A, B, C])

    def test_metric_names(self) -> None:
        s = self.summary
        assert s.metric("ttft") is s.ttft
        assert s.metric("itl_chunk") is s.itl_chunk
        assert s.metric("throughput") == s.request_throughput
        assert s.metric("token_throughput") == s.output_token_throughput
        assert s.metric("error_rate") == s.error_rate
        with pytest.raises(KeyError, match="unknown metric"):
            s.metric("latency")

    def test_to_dict_is_json(self) -> None:
        d = json.loads(json.dumps(self.summary.to_dict(), allow_nan=False))
        assert d["ttft"]["count"] == 2
        assert d["request_throughput"] == approx(1.0)
        assert d["errors"] == {"timeout": 1}
        assert d["goodput"] is None

    def test_table(self) -> None:
        lines = self.summary.table().splitlines()
        assert lines[0].split() == [
            "metric", "[ms]", "n", "mean", "p50", "p90", "p95", "p99", "p99.9",
        ]  # fmt: skip
        ttft_row = next(line for line in lines if line.startswith("ttft"))
        assert ttft_row.split()[:4] == ["ttft", "2", "400.00", "400.00"]
        assert "error rate 33.33% (timeout=1)" in self.summary.table()
        assert len({len(line) for line in lines[:7]}) == 1  # fixed width


def test_summarize_100k_records_counts_every_sample() -> None:
    """Large runs keep every sample (speed is measured in bench/bench_metrics.py)."""
    records = [
        RequestRecord(
            index=i,
            scheduled=i * 0.01,
            sent=i * 0.01,
            first_token=i * 0.01 + 0.05,
            end=i * 0.01 + 0.12,
            chunk_times=[i * 0.01 + 0.05 + 0.01 * j for j in range(8)],
            chunk_tokens=[1] * 7 + [2],
            completion_tokens=9,
        )
        for i in range(100_000)
    ]
    s = summarize(records, warmup_s=1.0, slos=parse_slos(["ttft_p99<1s"]))
    assert s.requests == 99_900
    assert s.itl_token.count == 99_900 * 8
    assert s.goodput == pytest.approx(s.request_throughput)


class TestCompare:
    @staticmethod
    def run(ttft: float, n: int = 200, spacing: float = 0.1) -> Summary:
        """A run of n identical requests with the given TTFT, one every ``spacing`` seconds."""
        recs = [streamed(i, i * spacing, [i * spacing + ttft, i * spacing + ttft + 0.02])
                for i in range(n)]  # fmt: skip
        return summarize(recs)

    def baseline(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(json.dumps(self.run(0.5).to_dict()))
        return loaded

    def test_same_run_is_ok(self) -> None:
        findings = compare(self.run(0.5), self.baseline())
        assert [f.metric for f in findings] == [
            "ttft.p95",
            "itl_token.p95",
            "e2e.p95",
            "throughput",
        ]
        assert not any(f.regressed for f in findings)
        assert not any(f.few_samples for f in findings)

    def test_slower_ttft_regresses(self) -> None:
        (f,) = compare(self.run(0.6), self.baseline(), metrics=["ttft.p95"])
        assert f.regressed
        assert f.change == approx(0.2)
        assert f.message.startswith("ttft.p95 regressed: 600 ms vs baseline 500 ms (+20.0%")

    def test_within_tolerance(self) -> None:
        (f,) = compare(self.run(0.54), self.baseline(), metrics=["ttft.p95"])
        assert not f.regressed
        assert " ok: " in f.message

    def test_faster_is_improved_not_regressed(self) -> None:
        (f,) = compare(self.run(0.3), self.baseline(), metrics=["ttft.p95"])
        assert not f.regressed
        assert " improved: " in f.message

    def test_lower_throughput_regresses(self) -> None:
        slower = summarize(
            [streamed(i, i * 0.2, [i * 0.2 + 0.5, i * 0.2 + 0.52]) for i in range(200)]
        )
        (f,) = compare(slower, self.baseline(), metrics=["throughput"])
        assert f.regressed
        assert "lower is worse" in f.message
        assert f.change == approx(-0.5, abs=0.01)

    def test_few_samples_flagged(self) -> None:
        (f,) = compare(self.run(0.5, n=40), self.baseline(), metrics=["ttft.p99"])
        assert f.few_samples
        assert "[few samples: 40 now, 200 in baseline; p99 needs 100]" in f.message

    def test_missing_baseline_value_is_not_a_regression(self) -> None:
        (f,) = compare(self.run(0.5), {}, metrics=["ttft.p95"])
        assert not f.regressed
        assert "no baseline value" in f.message

    def test_missing_current_value_is_a_regression(self) -> None:
        (f,) = compare(summarize([B]), self.baseline(), metrics=["ttft.p95"])
        assert f.regressed
        assert "no value in this run" in f.message

    def test_bad_metric_paths(self) -> None:
        with pytest.raises(ValueError, match="unknown metric"):
            compare(self.run(0.5), {}, metrics=["latency.p95"])
        with pytest.raises(ValueError, match="needs a statistic"):
            compare(self.run(0.5), {}, metrics=["ttft"])
        with pytest.raises(ValueError, match="not stored"):
            compare(self.run(0.5), {"ttft": {"p95": 1}}, metrics=["ttft.p42"])
