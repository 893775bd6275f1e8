"""Real workloads against the real engine: a ShareGPT file, a Mooncake trace, multi-turn
sessions, shared prefixes with the engine's own prefix-cache counters, and embeddings.

Every file is made here in its real format (nothing comes from a hub); lengths are counted by
the server's own ``/tokenize``. With ``ignore_eos`` each request must produce exactly the output
length its row asked for, and every prompt must reach the server at its asked length plus the
chat template's constant share. Point the same objects at your own files to replay them:
``Dataset("/data/ShareGPT_V3.json")``, ``Trace("mooncake_trace.jsonl")`` (docs/workloads.md).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_gpuinfer.load import cli as load_cli
from pytest_gpuinfer.load.result import LoadResult, comparison_table
from pytest_gpuinfer.load.runner import Limits, LoadRunner
from pytest_gpuinfer.load.schedule import ClosedLoop, Poisson, TraceTimes
from pytest_gpuinfer.load.workloads import (
    Conversations,
    Dataset,
    Embeddings,
    SharedPrefix,
    Trace,
    samples,
)
from pytest_gpuinfer.models import builtin
from pytest_gpuinfer.targets import InferenceServer

# These tests judge what the workloads send and get (lengths, times, turns, cache hits), each
# asserting that every request succeeded: their runs carry no latency verdict (check_slos=False),
# which would read NOT JUDGED here (no latency SLO fits a workload check). Latency is perf's.


def exact(result: LoadResult) -> None:
    """Every request completed with its asked output length; prompts arrived as built."""
    print(f"\n{result.summary_text()}")
    failed = [r.error_message for r in result.records if not r.ok]
    assert not failed, f"{len(failed)} requests failed: {failed[:3]}"
    lengths = result.lengths
    assert lengths.output_exact, lengths.text()
    assert lengths.asked_output.min < lengths.asked_output.max, "rows should ask varied lengths"


def test_sharegpt_file_replays_with_each_rows_own_lengths(load_runner: Any, tmp_path: Path) -> None:
    path = samples.write_sharegpt(tmp_path / "sharegpt.json", 16)
    result = load_runner.run(ClosedLoop(4), Dataset(str(path), ignore_eos=True), check_slos=False)
    exact(result)
    assert len(result.records) == 16
    assert result.lengths.input_exact, result.lengths.text()


def test_mooncake_trace_replays_at_its_times_with_its_lengths(
    load_runner: Any, tmp_path: Path
) -> None:
    path = samples.write_mooncake(tmp_path / "mooncake.jsonl", 16, rate=8.0, block_tokens=32)
    workload = Trace(str(path), block_tokens=32, ignore_eos=True)
    result = load_runner.run(TraceTimes(workload.load(), speed=2.0), workload, check_slos=False)
    exact(result)
    asked = [r.asked_input_tokens for r in result.records]
    assert asked == [request.input_tokens for request in workload.load().requests]
    assert result.lengths.input_exact, result.lengths.text()
    assert result.dispatch_error.count == 16


def test_multi_turn_sessions_carry_their_history(load_runner: Any) -> None:
    workload = Conversations(
        turns=3, input_tokens=16, output_tokens=8, sessions=4, think_s=0.1, ignore_eos=True
    )
    result = load_runner.run(ClosedLoop(2), workload, check_slos=False)
    exact_outputs = all(r.completion_tokens == 8 for r in result.records)
    print(f"\n{result.summary_text()}")
    assert all(r.ok for r in result.records) and exact_outputs
    by_session: dict[int, list[Any]] = {}
    for record in result.records:
        by_session.setdefault(record.session or 0, []).append(record)
    for turns in by_session.values():
        turns.sort(key=lambda r: r.turn)
        for earlier, later in itertools.pairwise(turns):
            # the new message (16 tokens) and the carried reply both grew the context
            assert later.prompt_tokens - earlier.prompt_tokens > 16 + 4
            assert later.scheduled - earlier.end == pytest.approx(0.1, abs=1e-6)
    assert [t.turn for t in result.turns] == [0, 1, 2]


def test_gpuinfer_load_replays_the_same_three_files(
    inference_server: InferenceServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command takes the same files: ShareGPT, Mooncake, a multi-turn ShareGPT set."""
    base = ["--endpoint", inference_server.base_url, "--model", inference_server.model]
    base += ["--quiet", "--ignore-eos"]
    sharegpt = samples.write_sharegpt(tmp_path / "s.json", 8)
    trace = samples.write_mooncake(tmp_path / "t.jsonl", 8, rate=8.0, block_tokens=32)
    chats = samples.write_sharegpt(tmp_path / "chats.json", 3, turns=2, seed=1)
    runs = [
        ["--dataset", str(sharegpt), "--rate", "8"],
        ["--trace", str(trace), "--speed", "2", "--block-tokens", "32"],
        ["--conversations", str(chats), "--concurrency", "2"],
    ]
    for index, argv in enumerate(runs):
        out = tmp_path / f"run{index}.json"
        status = load_cli.main([*base, *argv, "--json", str(out)])
        printed = capsys.readouterr()
        print(printed.out)
        assert status == 0, printed.err
        document = json.loads(out.read_text())
        assert document["lengths"]["output_exact"] is True, argv
    assert [t["turn"] for t in document["turns"]] == [0, 1]


def test_shared_prefixes_hit_the_prefix_cache_and_unshared_ones_do_not(
    load_runner: Any, request: pytest.FixtureRequest
) -> None:
    """The engine's own counters over each run: hits with 2 shared 256-token system prompts,
    none when every request has its own; TTFT of both side by side."""
    limits = Limits(requests=12)
    results = {}
    for label, shared in (("shared prefix", True), ("no shared prefix", False)):
        workload = SharedPrefix(
            2, prefix_tokens=256, suffix_tokens=16, output_tokens=4, shared=shared, seed=7
        )
        results[label] = load_runner.run(ClosedLoop(2), workload, limits, check_slos=False)
        failed = [r.error_message for r in results[label].records if not r.ok]
        assert not failed, f"{label}: {len(failed)} requests failed: {failed[:3]}"
    table = comparison_table(results)
    print(f"\n{table}")
    request.node.add_report_section("call", "gpuinfer prefix cache", table)
    with_cache = results["shared prefix"].prefix_cache
    without = results["no shared prefix"].prefix_cache
    assert with_cache is not None and without is not None, "vLLM exposes the cache counters"
    assert with_cache.hit_rate > 0.3, with_cache.text()
    assert without.hit_rate < 0.02, without.text()


def test_embeddings_load_on_a_pooling_server(
    server_factory: Any, inference_server: Any, gpuinfer_settings: Any
) -> None:
    """The built-in model as an embedding model (vLLM's pooling runner): batches of 1 and 8,
    inputs per second and latency percentiles. On a built-in pooling model
    (``--model builtin:qwen3-embed``) the session's server serves; otherwise one is launched."""
    known = builtin.resolve(gpuinfer_settings.model)
    if known is not None and known.pooling:
        server = inference_server
    else:
        server = server_factory.launch(["--runner", "pooling", "--convert", "embed"])
    runner = LoadRunner(server.base_url, server.model, api_key=server.api_key)
    lines = []
    for batch in (1, 8):
        result = runner.run(
            Poisson(20, seed=batch), Embeddings(batch=batch, input_tokens=32), Limits(requests=24)
        )
        failed = [r.error_message for r in result.records if not r.ok]
        assert not failed, failed[:3]
        figures = result.embeddings
        assert figures is not None and figures.inputs == 24 * batch
        assert all(
            r.prompt_tokens is not None and r.prompt_tokens >= 32 * batch for r in result.records
        )
        lines.append(f"batch {batch}: {figures.text()}")
    print("\n" + "\n".join(lines))
