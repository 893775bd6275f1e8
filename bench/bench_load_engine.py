"""Benchmark of the load engine against the simulator (a script, not a test).

The simulator runs as its own process pinned to one CPU and this client to another, so neither
steals the other's core. Prints:

* the highest completed streaming request rate against a zero-latency simulator (16-token outputs)
  and the client's CPU seconds per 1,000 requests;
* the achieved rate when 200 req/s are asked for open-loop (Poisson and constant);
* TTFT and ITL error, client-measured minus the simulator's own timestamps, at p50/p99, at
  concurrency 16 with TTFT 50 ms, ITL 10 ms and 64-token outputs;
* dataset vs synthetic: capacity (zero-latency simulator) and TTFT error with a ShareGPT-format
  file of varied lengths beside the same runs with one fixed prompt, in the same run (the
  instrument must cost no more with real workloads: within 10 %);
* trace replay: the dispatch error (sent minus recorded time) of a Mooncake-format trace at
  1,000 req/s (p99 must stay under 1 ms);
* with ``--stacks``: the same zero-latency workload through other HTTP stacks (aiohttp, httpx) and
  event loops, which is how the client's stack was chosen.

Figures depend on the machine being otherwise idle: the load average is printed before and after;
re-run when it is high. Usage: ``python bench/bench_load_engine.py [--quick] [--stacks]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import statistics
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from pytest_gpuinfer.load.client import InferenceClient, RequestSpec, SSEDecoder
from pytest_gpuinfer.load.prompts import WordCounter
from pytest_gpuinfer.load.runner import Limits, LoadResult, LoadRunner
from pytest_gpuinfer.load.schedule import ClosedLoop, Constant, Poisson, TraceTimes
from pytest_gpuinfer.load.workloads import Dataset, Prompts, Synthetic, Trace, Workload
from pytest_gpuinfer.metrics.records import RequestRecord
from pytest_gpuinfer.metrics.stats import Distribution, distribution
from pytest_gpuinfer.sim import run_in_process

MODEL = "sim-model"
PROMPT = "say something"


def _pick_cpus() -> tuple[int | None, int | None]:
    """CPUs for the simulator and the client (None when the machine cannot pin)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


SERVER_CPU, CLIENT_CPU = _pick_cpus()


def simulator(*arguments: str) -> contextlib.AbstractContextManager[str]:
    """Run the simulator CLI on the server CPU; yield its base URL."""
    return run_in_process(*arguments, cpu=SERVER_CPU)


def server_rows(url: str) -> dict[str, dict[str, Any]]:
    """The simulator's per-request timestamps, by request id."""
    with urllib.request.urlopen(url + "/sim/requests") as response:
        return {row["request_id"]: row for row in json.load(response)}


def ms(seconds: float) -> str:
    """Seconds shown as milliseconds."""
    return f"{seconds * 1e3:.3f} ms"


def loadavg() -> str:
    """The 1/5/15-minute load averages."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


def machine_busy_fraction(window_s: float = 2.0) -> float:
    """Share of all CPUs busy over ``window_s`` (from /proc/stat; 0 where it cannot be read)."""

    def totals() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total_before, idle_before = totals()
        time.sleep(window_s)
        total_after, idle_after = totals()
    except OSError:
        return 0.0
    total = total_after - total_before
    return 1.0 - (idle_after - idle_before) / total if total else 0.0


def wait_until_quiet(limit: float = 0.1, patience_s: float = 300.0) -> None:
    """Wait (at most ``patience_s``) until other processes use under ``limit`` of the CPUs."""
    deadline = time.monotonic() + patience_s
    busy = machine_busy_fraction()
    while busy >= limit and time.monotonic() < deadline:
        print(f"  (machine {busy:.0%} busy; waiting for it to quiet down)", flush=True)
        busy = machine_busy_fraction(5.0)
    print(f"  (machine {busy:.0%} busy before this measurement)", flush=True)


def zero_latency_args(tokens: int = 16) -> tuple[str, ...]:
    """Simulator arguments for an instant server."""
    return ("--ttft-ms", "0", "--itl-ms", "0", "--output-tokens", str(tokens))


def bench_max_rate(concurrencies: list[int], requests: int) -> None:
    """Completed streaming req/s and client CPU per 1,000 requests at zero server latency."""
    print("\n== highest completed streaming rate, zero-latency simulator, 16-token outputs ==")
    with simulator(*zero_latency_args()) as url:
        runner = LoadRunner(url, MODEL)
        for concurrency in concurrencies:
            result = runner.run(
                ClosedLoop(concurrency), Prompts(PROMPT, 16), Limits(requests=requests)
            )
            check = result.self_check
            summary = result.summary
            per_thousand = check.cpu_s / len(result.records) * 1000
            print(
                f"concurrency {concurrency:4d}: {summary.completed} ok / {summary.failed} failed, "
                f"{summary.request_throughput:7.0f} req/s, client CPU {per_thousand:.3f} s per "
                f"1,000 requests ({check.cpu_fraction:.0%} of a core), "
                f"{'client-bound' if check.client_bound else 'not client-bound'}"
            )
            for reason in check.reasons:
                print(f"    self-check: {reason}")


def bench_open_loop(rate: float, requests: int) -> None:
    """Achieved send and completion rates when ``rate`` req/s are asked for open-loop."""
    print(f"\n== open loop at {rate:.0f} req/s, simulator TTFT 5 ms, ITL 1 ms, 16 tokens ==")
    with simulator("--ttft-ms", "5", "--itl-ms", "1", "--output-tokens", "16") as url:
        runner = LoadRunner(url, MODEL)
        for arrival, schedule in (("poisson", Poisson(rate)), ("constant", Constant(rate))):
            result = runner.run(schedule, Prompts(PROMPT, 16), Limits(requests=requests))
            records = result.records
            scheduled = sorted(r.scheduled for r in records)
            sent = sorted(r.sent for r in records if r.sent is not None)
            ends = sorted(r.end for r in records if r.ok and r.end is not None)
            asked = (len(scheduled) - 1) / (scheduled[-1] - scheduled[0])
            achieved = (len(sent) - 1) / (sent[-1] - sent[0])
            completed = (len(ends) - 1) / (ends[-1] - ends[0])
            check = result.self_check
            print(
                f"{arrival:8s}: {len(records)} requests, schedule's own rate {asked:.2f} req/s, "
                f"sent {achieved:.2f} req/s ({achieved / asked - 1:+.2%} vs schedule, "
                f"{achieved / rate - 1:+.2%} vs {rate:.0f}), completed {completed:.2f} req/s, "
                f"{result.summary.failed} failed; dispatch slip p50/p99 "
                f"{ms(check.dispatch_slip.p50)}/{ms(check.dispatch_slip.p99)}, "
                f"client CPU {check.cpu_fraction:.0%}"
            )


def bench_accuracy(
    requests: int, ramp_s: float, workload: Workload | None = None, label: str = ""
) -> tuple[LoadResult, Distribution]:
    """TTFT and ITL measured by the client against the simulator's own timestamps; returns the
    result and the per-request TTFT error."""
    start = "all slots at once" if ramp_s == 0 else f"slots started over {ramp_s * 1e3:.0f} ms"
    print(
        f"\n== accuracy at concurrency 16: simulator TTFT 50 ms, ITL 10 ms, 64 tokens; {start}"
        f"{label} =="
    )
    with simulator("--ttft-ms", "50", "--itl-ms", "10", "--output-tokens", "64") as url:
        result = LoadRunner(url, MODEL, counter=WordCounter()).run(
            ClosedLoop(16, ramp_s), workload or Prompts(PROMPT, 64), Limits(requests=requests)
        )
        truth = server_rows(url)
    rows = [(r, truth[r.request_id]) for r in result.records if r.ok and r.request_id in truth]
    ttft_error = distribution(
        [
            (r.first_token - r.scheduled) - (row["first_token"] - row["received"])
            for r, row in rows
            if r.first_token is not None
        ]
    )
    read_delay = distribution(
        [r.first_token - row["first_token"] for r, row in rows if r.first_token is not None]
    )
    end_delay = distribution([r.end - row["end"] for r, row in rows if r.end is not None])
    server_ttft = distribution([row["first_token"] - row["received"] for _, row in rows])
    server_receive = distribution(
        [row["received"] - r.sent for r, row in rows if r.sent is not None]
    )
    server_lag = distribution([row["max_lag"] for _, row in rows])
    client_ttft: Distribution = result.ttft
    print(f"{len(rows)} requests; {result.self_check.text()}")
    print(
        f"TTFT client p50/p99 {ms(client_ttft.p50)}/{ms(client_ttft.p99)}, server truth "
        f"p50/p99 {ms(server_ttft.p50)}/{ms(server_ttft.p99)}: error of the percentiles "
        f"{ms(client_ttft.p50 - server_ttft.p50)}/{ms(client_ttft.p99 - server_ttft.p99)}"
    )
    print(
        f"TTFT error per request (client from scheduled minus server receipt-to-first-write) "
        f"p50 {ms(ttft_error.p50)}, p99 {ms(ttft_error.p99)}, max {ms(ttft_error.max)}"
    )
    print(
        f"  of which client queue (scheduled to sent) p50 {ms(result.queue.p50)}, p99 "
        f"{ms(result.queue.p99)}; server receipt after send p50 {ms(server_receive.p50)}, "
        f"p99 {ms(server_receive.p99)}"
    )
    print(
        f"first-token read delay (client stamp minus server write) p50 {ms(read_delay.p50)}, "
        f"p99 {ms(read_delay.p99)}; last-chunk read delay p50 {ms(end_delay.p50)}, "
        f"p99 {ms(end_delay.p99)}"
    )
    itl = result.summary.itl_chunk
    print(
        f"ITL client p50/p99 {ms(itl.p50)}/{ms(itl.p99)}: error vs the 10 ms truth "
        f"{ms(itl.p50 - 0.010)}/{ms(itl.p99 - 0.010)}; server's own write lag p50/p99 "
        f"{ms(server_lag.p50)}/{ms(server_lag.p99)}"
    )
    return result, ttft_error


# --- workloads: a dataset and a replayed trace ------------------------------------------------

WORDS = ("the", "a", "and", "of", "is", "in", "on", "it", "we", "to")
DATASET_MEAN_WORDS = 130
"""Mean prompt length of :func:`sharegpt_file`'s rows (uniform over 4-256 words)."""


def sharegpt_file(directory: str, rows: int, seed: int = 0) -> str:
    """A ShareGPT-format file of ``rows`` conversations, prompts of 4-256 words, replies 8-128."""
    rng = random.Random(seed)

    def words(count: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(count))

    data = [
        {
            "id": f"bench-{i}",
            "conversations": [
                {"from": "human", "value": words(rng.randint(4, 256))},
                {"from": "gpt", "value": words(rng.randint(8, 128))},
            ],
        }
        for i in range(rows)
    ]
    path = os.path.join(directory, "sharegpt.json")
    with open(path, "w", encoding="utf-8") as out:
        json.dump(data, out)
    return path


def mooncake_file(directory: str, rate: float, requests: int, seed: int = 0) -> str:
    """A Mooncake-format trace: Poisson arrivals at ``rate`` (whole milliseconds, as published),
    prompts of 16-token blocks that repeat across requests, 16-token outputs."""
    rng = random.Random(seed)
    path = os.path.join(directory, "mooncake.jsonl")
    at = 0.0
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(requests):
            blocks = rng.randint(1, 8)
            hash_ids = [rng.randint(0, 63) for _ in range(blocks)]
            row = {
                "timestamp": int(at * 1000),
                "input_length": blocks * 16 - rng.randint(0, 15),
                "output_length": 16,
                "hash_ids": hash_ids,
            }
            out.write(json.dumps(row) + "\n")
            at += rng.expovariate(rate)
    return path


def bench_dataset(concurrency: int, requests: int, accuracy_requests: int, rounds: int = 3) -> None:
    """Capacity and TTFT error with a ShareGPT dataset beside the same runs with one prompt,
    interleaved over ``rounds`` so a busy machine weighs on both alike (medians compared)."""
    print(
        f"\n== dataset vs synthetic prompts of its mean length ({DATASET_MEAN_WORDS} words): "
        f"capacity at concurrency {concurrency} (zero-latency simulator, outputs up to 16 "
        f"tokens; {rounds} interleaved rounds), then TTFT error (TTFT 50 ms, ITL 10 ms) =="
    )
    with tempfile.TemporaryDirectory() as directory:
        path = sharegpt_file(directory, 2000)
        dataset = Dataset(path, ignore_eos=True)
        # The same mean prompt size as the dataset's rows (4-256 words), so the comparison is of
        # the machinery, not of how many bytes each request carries.
        synthetic = Synthetic(DATASET_MEAN_WORDS, 16, prompts=256)
        rates: dict[str, list[float]] = {"synthetic": [], "dataset": []}
        cpu: dict[str, list[float]] = {"synthetic": [], "dataset": []}
        with simulator(*zero_latency_args()) as url:
            runner = LoadRunner(url, MODEL, counter=WordCounter())
            for _ in range(rounds):
                for name, workload in (("synthetic", synthetic), ("dataset", dataset)):
                    result = runner.run(
                        ClosedLoop(concurrency), workload, Limits(requests=requests)
                    )
                    rates[name].append(result.summary.request_throughput)
                    cpu[name].append(result.self_check.cpu_s / len(result.records) * 1000)
        for name in rates:
            print(
                f"{name:9s}: req/s {', '.join(f'{r:.0f}' for r in rates[name])}; client CPU per "
                f"1,000 requests {', '.join(f'{c:.3f}' for c in cpu[name])} s"
            )
        errors = {}
        for name, workload in (
            ("synthetic", replace(synthetic, output_tokens=64)),
            ("dataset", dataset),
        ):
            _, errors[name] = bench_accuracy(accuracy_requests, 0.1, workload, f"; {name}")
    ratio = statistics.median(rates["dataset"]) / statistics.median(rates["synthetic"])
    cost = statistics.median(cpu["dataset"]) / statistics.median(cpu["synthetic"])
    verdict = "within" if abs(ratio - 1) <= 0.10 else "NOT within"
    print(
        f"\ndataset/synthetic medians: capacity {ratio:.1%} ({verdict} 10 %), client CPU per "
        f"request {cost:.1%}; TTFT error p50 {ms(errors['dataset'].p50)} vs "
        f"{ms(errors['synthetic'].p50)}, p99 {ms(errors['dataset'].p99)} vs "
        f"{ms(errors['synthetic'].p99)}"
    )


def bench_trace(rate: float, requests: int) -> None:
    """Dispatch error of a Mooncake trace replayed at its recorded times (``rate`` req/s)."""
    print(
        f"\n== trace replay: Mooncake-format trace at {rate:.0f} req/s (ms timestamps), "
        "simulator TTFT 5 ms, ITL 1 ms, 16 tokens =="
    )
    with tempfile.TemporaryDirectory() as directory:
        workload = Trace(mooncake_file(directory, rate, requests), block_tokens=16)
        with simulator("--ttft-ms", "5", "--itl-ms", "1", "--output-tokens", "16") as url:
            runner = LoadRunner(url, MODEL, counter=WordCounter())
            result = runner.run(TraceTimes(workload.load()), workload)
    error = result.dispatch_error
    check = result.self_check
    print(
        f"{len(result.records)} requests, {result.summary.failed} failed; dispatch error "
        f"(sent - recorded time) p50/p99/max {ms(error.p50)}/{ms(error.p99)}/{ms(error.max)} "
        f"({'under' if error.p99 < 0.001 else 'NOT under'} 1 ms at p99); client CPU "
        f"{check.cpu_fraction:.0%}; {result.lengths.text().splitlines()[0]}"
    )
    print(check.text())


# --- other HTTP stacks, for the choice of the client's stack -----------------------------------


def chat_body(tokens: int) -> bytes:
    """A streaming chat request body like the engine's."""
    spec = RequestSpec(PROMPT, tokens)
    return spec.body("chat", MODEL, "continuous")


def handle_events(record: RequestRecord, decoder: SSEDecoder, data: bytes, now: float) -> None:
    """The per-read work every stack does: decode SSE, parse JSON, stamp text chunks."""
    import orjson

    for _, payload in decoder.feed(data):
        if payload == b"[DONE]":
            record.end = now
            continue
        chunk = orjson.loads(payload)
        for choice in chunk.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                if record.first_token is None:
                    record.first_token = now
                record.chunk_times.append(now)
                record.chunk_tokens.append(1)


async def closed_loop(
    send: Callable[[RequestRecord], Awaitable[None]], concurrency: int, requests: int
) -> tuple[float, float, int]:
    """Run ``requests`` through ``send`` with ``concurrency`` slots; wall s, CPU s, ok count."""
    numbers = iter(range(requests))
    records: list[RequestRecord] = []

    async def slot() -> None:
        for number in numbers:
            record = RequestRecord(number, time.perf_counter())
            await send(record)
            records.append(record)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(slot() for _ in range(concurrency)))
    ok = sum(1 for r in records if r.end is not None and len(r.chunk_times) == 16)
    return time.perf_counter() - wall, time.process_time() - cpu, ok


async def run_aiohttp(url: str, concurrency: int, requests: int) -> tuple[float, float, int]:
    """The zero-latency workload through aiohttp."""
    import aiohttp

    body = chat_body(16)
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(record: RequestRecord) -> None:
            decoder = SSEDecoder()
            record.sent = time.perf_counter()
            async with session.post(
                url + "/v1/chat/completions", data=body, headers=headers
            ) as response:
                async for data in response.content.iter_any():
                    handle_events(record, decoder, data, time.perf_counter())

        return await closed_loop(send, concurrency, requests)


async def run_httpx(url: str, concurrency: int, requests: int) -> tuple[float, float, int]:
    """The zero-latency workload through httpx."""
    import httpx

    body = chat_body(16)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def send(record: RequestRecord) -> None:
            decoder = SSEDecoder()
            record.sent = time.perf_counter()
            async with client.stream(
                "POST",
                url + "/v1/chat/completions",
                content=body,
                headers={"Content-Type": "application/json"},
            ) as response:
                async for data in response.aiter_raw():
                    handle_events(record, decoder, data, time.perf_counter())

        return await closed_loop(send, concurrency, requests)


async def run_raw(url: str, concurrency: int, requests: int) -> tuple[float, float, int]:
    """The zero-latency workload through this project's client (asyncio protocol + httptools)."""
    spec = RequestSpec(PROMPT, 16)
    client = InferenceClient(url, MODEL, max_connections=concurrency)
    try:

        async def send(record: RequestRecord) -> None:
            await client.send(spec, record)

        return await closed_loop(send, concurrency, requests)
    finally:
        await client.aclose()


def bench_stacks(concurrency: int, requests: int) -> None:
    """Req/s and CPU per 1,000 requests of each HTTP stack and event loop."""
    import uvloop

    print(f"\n== HTTP stacks: zero-latency simulator, 16 tokens, concurrency {concurrency} ==")
    stacks: list[tuple[str, Callable[[str, int, int], Awaitable[tuple[float, float, int]]]]] = [
        ("aiohttp", run_aiohttp),
        ("httpx", run_httpx),
        ("asyncio protocol + httptools", run_raw),
    ]
    with simulator(*zero_latency_args()) as url:
        for name, run in stacks:
            for loop_name, new_loop in (
                ("asyncio", asyncio.new_event_loop),
                ("uvloop", uvloop.new_event_loop),
            ):
                loop = new_loop()
                try:
                    loop.run_until_complete(run(url, concurrency, 200))  # warm up
                    wall, cpu, ok = loop.run_until_complete(run(url, concurrency, requests))
                finally:
                    loop.close()
                print(
                    f"{name:30s} {loop_name:8s}: {ok / wall:7.0f} req/s, "
                    f"client CPU {cpu / requests * 1000:.3f} s per 1,000 requests "
                    f"({cpu / wall:.0%} of a core), {ok}/{requests} complete"
                )


def bench_json() -> None:
    """Cost of parsing one vLLM-shaped chunk with json and orjson."""
    import orjson

    chunk = (
        b'{"id":"chatcmpl-8d1f0e6a2b3c","object":"chat.completion.chunk","created":1718000000,'
        b'"model":"tiny","choices":[{"index":0,"delta":{"content":" hello"},"logprobs":null,'
        b'"finish_reason":null}],"usage":{"prompt_tokens":5,"total_tokens":6,'
        b'"completion_tokens":1}}'
    )
    number = 100_000
    parsers: list[tuple[str, Callable[[bytes], Any]]] = [
        ("json", json.loads),
        ("orjson", orjson.loads),
    ]
    for name, loads in parsers:
        seconds = timeit.timeit(functools.partial(loads, chunk), number=number)
        print(f"{name:7s} parse of a {len(chunk)}-byte chunk: {seconds / number * 1e6:.2f} us")


def main() -> int:
    """Run the benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (rougher figures)")
    parser.add_argument("--stacks", action="store_true", help="also compare HTTP stacks")
    parser.add_argument("--only-stacks", action="store_true", help="compare HTTP stacks only")
    parser.add_argument(
        "--wait-quiet", action="store_true", help="before each part, wait for an idle machine"
    )
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    if CLIENT_CPU is not None:
        os.sched_setaffinity(0, {CLIENT_CPU})
    print(f"pytest-gpuinfer load-engine benchmark; before: {loadavg()}")
    print(f"simulator on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}")
    parts: list[Callable[[], object]] = []
    if args.stacks or args.only_stacks:
        parts += [bench_json, functools.partial(bench_stacks, 32, int(8000 * scale))]
    if not args.only_stacks:
        parts += [
            functools.partial(bench_max_rate, [16, 32, 64], int(20000 * scale)),
            functools.partial(bench_open_loop, 200.0, int(2000 * scale)),
            functools.partial(bench_accuracy, int(320 * scale), 0.0),
            functools.partial(bench_accuracy, int(320 * scale), 0.1),
            functools.partial(bench_dataset, 64, int(20000 * scale), int(320 * scale)),
            functools.partial(bench_trace, 1000.0, int(10000 * scale)),
        ]
    for part in parts:
        if args.wait_quiet:
            wait_until_quiet()
        part()
    print(f"\nafter: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
