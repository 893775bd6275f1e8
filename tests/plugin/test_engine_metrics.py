"""Tests for metrics.engine_gauges: Prometheus parsing, engine gauges, the sampler."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from fake_http import FakeHandler

from pytest_gpuinfer.metrics.engine_gauges import (
    EngineGauges,
    MetricsSampler,
    detect_engine,
    engine_gauges,
    fetch_metrics,
    metrics_url,
    parse_metrics,
    scrape_gauges,
)

# What vLLM's /metrics looks like (labels engine and model_name), trimmed to a few families.
VLLM_TEXT = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 4.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 5.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="deferred"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 3.0
# HELP vllm:num_preemptions_created Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_created gauge
vllm:num_preemptions_created{engine="0",model_name="m"} 1.7954e+09
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 1.25
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 8.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 10.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 10.0
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="m"} 6.5
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 10.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 10.0
"""

# A second data-parallel engine on the same server.
VLLM_DP_EXTRA = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 4.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.9
# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 3.0
vllm:num_preemptions_total{engine="1",model_name="m"} 1.0
"""

SGLANG_TEXT = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 12.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 30.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m"} 0.28
# HELP sglang:num_retracted_requests_total Total number of retracted requests.
# TYPE sglang:num_retracted_requests_total counter
sglang:num_retracted_requests_total{model_name="m"} 2.0
"""

TGI_TEXT = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 9
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
"""

LLAMACPP_TEXT = """\
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 3
"""


def vllm_text(running: int, waiting: int) -> str:
    """A minimal vLLM scrape with the given scheduler state."""
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}\n'
    )


class TestParse:
    def test_samples_keyed_by_sample_name(self) -> None:
        metrics = parse_metrics(VLLM_TEXT)
        (running,) = metrics["vllm:num_requests_running"]
        assert running.value == 4.0
        assert running.labels == {"engine": "0", "model_name": "m"}
        assert metrics["vllm:num_preemptions_total"][0].value == 3.0
        assert len(metrics["vllm:num_requests_waiting_by_reason"]) == 2
        assert len(metrics["vllm:time_to_first_token_seconds_bucket"]) == 3
        assert metrics["vllm:time_to_first_token_seconds_count"][0].value == 10.0

    def test_bad_text_raises_value_error(self) -> None:
        with pytest.raises(ValueError, match="cannot parse Prometheus"):
            parse_metrics("vllm:num_requests_running{engine=0} not-a-number\n")

    def test_empty_text(self) -> None:
        assert parse_metrics("") == {}


class TestGauges:
    def test_vllm(self) -> None:
        metrics = parse_metrics(VLLM_TEXT)
        assert detect_engine(metrics) == "vllm"
        assert engine_gauges(metrics) == EngineGauges(
            running=4.0,
            waiting=7.0,
            kv_cache_usage=0.42,
            preemptions=3.0,
            engine="vllm",
            request_seconds=6.5,
            requests_finished=10.0,
        )

    def test_vllm_data_parallel_sums_queues_and_takes_fullest_cache(self) -> None:
        g = engine_gauges(parse_metrics(VLLM_DP_EXTRA))
        assert (g.running, g.waiting, g.kv_cache_usage, g.preemptions) == (6.0, 8.0, 0.9, 4.0)

    def test_model_filter(self) -> None:
        other = VLLM_TEXT.replace('model_name="m"', 'model_name="other"')
        metrics = parse_metrics(other)
        assert engine_gauges(metrics, model="m").running is None
        assert engine_gauges(metrics, model="other").running == 4.0

    def test_older_vllm_cache_name(self) -> None:
        text = "# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.5\n"
        g = engine_gauges(parse_metrics(text))
        assert g.engine == "vllm"
        assert g.kv_cache_usage == 0.5
        assert g.running is None

    def test_sglang(self) -> None:
        assert engine_gauges(parse_metrics(SGLANG_TEXT)) == EngineGauges(
            12.0, 30.0, 0.28, 2.0, "sglang"
        )

    def test_tgi(self) -> None:
        assert engine_gauges(parse_metrics(TGI_TEXT)) == EngineGauges(16.0, 9.0, None, None, "tgi")

    def test_llamacpp(self) -> None:
        g = engine_gauges(parse_metrics(LLAMACPP_TEXT))
        assert g == EngineGauges(1.0, 3.0, None, None, "llamacpp")

    def test_unknown_engine_gives_nothing(self) -> None:
        text = "# TYPE something gauge\nsomething 1\n"
        assert engine_gauges(parse_metrics(text)) == EngineGauges(None, None, None, None, None)
        with pytest.raises(ValueError, match="unknown engine"):
            engine_gauges(parse_metrics(text), engine="triton")


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/metrics"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/metrics"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/metrics"),
        ("http://h:1/v1/", "http://h:1/metrics"),
        ("https://h/prefix", "https://h/prefix/metrics"),
        ("http://h:1/metrics", "http://h:1/metrics"),
    ],
)
def test_metrics_url(base: str, url: str) -> None:
    assert metrics_url(base) == url


class _Handler(FakeHandler):
    """Serves ``server.body`` at /metrics and 404 elsewhere."""

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        body: bytes = self.server.body  # type: ignore[attr-defined]
        self.send_body(200, body, "text/plain; version=0.0.4; charset=utf-8")


@pytest.fixture
def metrics_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.body = VLLM_TEXT.encode()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _base(server: http.server.ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


class TestFetch:
    def test_fetch_and_scrape(self, metrics_server: http.server.ThreadingHTTPServer) -> None:
        base = _base(metrics_server)
        assert fetch_metrics(base + "/v1", timeout=5) == VLLM_TEXT
        assert scrape_gauges(base).waiting == 7.0

    def test_http_error_is_oserror(self, metrics_server: http.server.ThreadingHTTPServer) -> None:
        with pytest.raises(OSError, match="404"):
            fetch_metrics(_base(metrics_server) + "/elsewhere/metrics", timeout=5)

    def test_refused_is_oserror(self) -> None:
        with pytest.raises(OSError, match=r"refused|urlopen error"):
            fetch_metrics("http://127.0.0.1:1", timeout=2)

    def test_non_http_url_rejected(self) -> None:
        with pytest.raises(ValueError, match="not an http"):
            fetch_metrics("file:///etc/passwd")


class TestSampler:
    def test_records_readings_over_time(self) -> None:
        texts = iter([vllm_text(1, 0), vllm_text(4, 9), vllm_text(4, 30), vllm_text(2, 0)])
        last = vllm_text(0, 0)

        def fetch() -> str:
            return next(texts, last)

        clock = iter(range(1000))
        sampler = MetricsSampler(fetch=fetch, interval=0.001, clock=lambda: float(next(clock)))
        with sampler:
            deadline = time.monotonic() + 5
            while len(sampler.readings) < 5 and time.monotonic() < deadline:
                time.sleep(0.005)
        readings = sampler.readings
        assert len(readings) >= 6  # at least five on the thread, one final on stop
        waiting = [r.gauges.waiting for r in readings]
        assert waiting[:5] == [0.0, 9.0, 30.0, 0.0, 0.0]
        assert readings[0].t == 0.5  # middle of the scrape: clock 0 before, 1 after
        assert [r.t for r in readings] == sorted(r.t for r in readings)
        assert sampler.peak("waiting") == 30.0
        assert sampler.peak("waiting", start=5.0) == 0.0
        assert sampler.peak("waiting", end=4.0) == 9.0
        assert sampler.peak("kv_cache_usage") is None
        assert sampler.series("running")[:2] == [(0.5, 1.0), (2.5, 4.0)]
        assert sampler.errors == 0

    def test_failures_are_counted_not_raised(self) -> None:
        def fetch() -> str:
            raise ConnectionRefusedError("refused")

        sampler = MetricsSampler(fetch=fetch, interval=0.01)
        assert sampler.sample_once() is None
        assert sampler.errors == 1
        assert sampler.last_error == "ConnectionRefusedError: refused"
        assert sampler.readings == []

    def test_against_a_server(self, metrics_server: http.server.ThreadingHTTPServer) -> None:
        sampler = MetricsSampler(_base(metrics_server), interval=0.01, model="m").start()
        time.sleep(0.05)
        sampler.stop()
        assert sampler.readings
        assert sampler.peak("running") == 4.0
        assert sampler.errors == 0

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="interval"):
            MetricsSampler("http://x", interval=0)
        with pytest.raises(ValueError, match="base_url or fetch"):
            MetricsSampler()
        sampler = MetricsSampler(fetch=lambda: "", interval=1).start()
        with pytest.raises(RuntimeError, match="already started"):
            sampler.start()
        sampler.stop(final_sample=False)
        sampler.stop()  # stopping twice is harmless
