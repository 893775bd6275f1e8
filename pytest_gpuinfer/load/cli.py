"""``gpuinfer-load``: run a load test against an OpenAI-compatible server from the command line.

The schedule is ``--concurrency N`` (closed loop, ``--ramp``), ``--rate R`` (open loop,
``--arrival``, ``--burstiness``, ``--max-concurrency``), ``--trace FILE`` (a Mooncake or Azure trace
replayed at its recorded times, ``--speed``, ``--window``, with its own lengths) or
``--schedule SPEC`` (any registered schedule). The workload is synthetic prompts of
``--prompt-tokens`` by default, or ``--prompt``, ``--dataset PATH`` (ShareGPT, JSONL, OpenAI chat,
Hugging Face on disk), ``--conversations PATH|synthetic``, or ``--workload SPEC`` (any registered
workload, e.g. ``shared-prefix:n_prefixes=4,prefix_tokens=256`` or ``embeddings:batch=8``).

Prints the summary table, asked vs achieved lengths, the load engine's self-check and SLO
verdicts. Exit status: 0 when every SLO holds and no request failed, 1 when an SLO fails or any
request failed (unless an error_rate SLO or --allow-errors allows failures), 2 on a usage error,
3 when nothing failed but an SLO could not be judged (too few samples for its percentile, say):
never a silent pass. The API key is read from an environment variable (``--api-key-env``, default
``OPENAI_API_KEY``), never from the command line, where other users of the machine could read it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_gpuinfer.load import prompts
from pytest_gpuinfer.load.client import Timeouts
from pytest_gpuinfer.load.retention import DEFAULT_MAX_RECORDS, KEEP_MODES
from pytest_gpuinfer.load.runner import Limits, LoadRunner, Retention, RunnerOptions
from pytest_gpuinfer.load.schedule import (
    ARRIVAL_KINDS,
    ClosedLoop,
    Constant,
    Gamma,
    Poisson,
    Schedule,
    TraceTimes,
    schedule_from_text,
)
from pytest_gpuinfer.load.workloads import (
    DATASET_FORMATS,
    TRACE_FORMATS,
    Conversations,
    Dataset,
    Prompts,
    Synthetic,
    Trace,
    Workload,
    workload_from_text,
)
from pytest_gpuinfer.metrics.slo import SLOSyntaxError, parse_slos

EXIT_OK = 0
EXIT_SLO_FAILED = 1
EXIT_NOT_JUDGED = 3
"""Nothing failed, but a verdict could not be judged (e.g. too few samples for a p99)."""
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="gpuinfer-load",
        description="Load-test an OpenAI-compatible inference server (vLLM, SGLang, TGI, ...).",
    )
    parser.add_argument("--endpoint", required=True, help="server base URL, e.g. http://host:8000")
    parser.add_argument("--model", required=True, help="model name to put in requests")
    parser.add_argument("--api", choices=("chat", "completions"), default="chat")
    parser.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="environment variable holding the API key (default OPENAI_API_KEY)",
    )
    when = parser.add_argument_group("schedule (one of)")
    load = when.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop: requests in flight")
    load.add_argument("--rate", type=float, help="open loop: mean requests per second")
    load.add_argument("--trace", metavar="FILE", help="replay a trace's times and lengths")
    load.add_argument(
        "--schedule",
        metavar="SPEC",
        help="a registered schedule, e.g. 'gamma:rate=4,burstiness=0.5'",
    )
    when.add_argument(
        "--ramp", type=float, default=0.0, help="with --concurrency: start slots over S s"
    )
    when.add_argument(
        "--max-concurrency", type=int, help="with --rate or --trace: cap on requests in flight"
    )
    when.add_argument("--arrival", choices=ARRIVAL_KINDS, default="poisson")
    when.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape (1 = Poisson, < 1 burstier)"
    )
    when.add_argument("--seed", type=int, default=0, help="seed of arrivals and sampling")
    when.add_argument("--trace-format", choices=TRACE_FORMATS, help="default: from the suffix")
    when.add_argument("--speed", type=float, default=1.0, help="--trace: replay S times faster")
    when.add_argument(
        "--block-tokens", type=int, help="--trace: prompt tokens per hash id (Mooncake: 512)"
    )
    when.add_argument(
        "--window", metavar="START:END", help="--trace: only the requests in these trace seconds"
    )
    what = parser.add_argument_group("workload (default: synthetic prompts of --prompt-tokens)")
    prompt = what.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument(
        "--prompt-tokens",
        type=int,
        default=32,
        help="prompt length in tokens of the target's tokenizer, before the chat template",
    )
    prompt.add_argument("--dataset", metavar="PATH", help="dataset file or directory")
    prompt.add_argument(
        "--conversations", metavar="PATH", help="multi-turn sessions from a dataset, or 'synthetic'"
    )
    prompt.add_argument(
        "--workload",
        metavar="SPEC",
        help="a registered workload, e.g. 'shared-prefix:n_prefixes=4'",
    )
    what.add_argument("--dataset-format", choices=DATASET_FORMATS, help="default: from the path")
    what.add_argument("--sample", type=int, help="--dataset: rows to draw (seeded)")
    what.add_argument("--turns", type=int, help="--conversations: turns per session (at most)")
    what.add_argument(
        "--think", type=float, default=0.0, help="--conversations: seconds between turns"
    )
    what.add_argument(
        "--max-tokens",
        type=int,
        help="output tokens per request (default 64; datasets and traces: each row's own)",
    )
    what.add_argument(
        "--tokenizer", metavar="DIR", help="model directory to count tokens with if no /tokenize"
    )
    what.add_argument(
        "--same-prompt", action="store_true", help="repeat one prompt instead of varied ones"
    )
    what.add_argument(
        "--ignore-eos", action="store_true", help="send ignore_eos (vLLM, SGLang) for exact lengths"
    )
    ends = parser.add_argument_group("limits")
    ends.add_argument("--requests", type=int, help="request cap")
    ends.add_argument("--duration", type=float, help="time cap in seconds")
    ends.add_argument("--warmup", type=float, default=0.0, help="seconds left out of the stats")
    ends.add_argument(
        "--slo", action="append", default=[], metavar="EXPR", help="e.g. 'ttft_p95<500ms'"
    )
    parser.add_argument("--no-stream", action="store_true", help="ask for whole responses")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--first-token-timeout", type=float, default=120.0)
    parser.add_argument("--total-timeout", type=float, default=600.0)
    parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="exit 0 even when requests failed (default: any failed request exits 1)",
    )
    parser.add_argument("--json", metavar="OUT", help="write the full result as JSON here")
    keep = parser.add_argument_group("memory (what the run keeps of its requests)")
    keep.add_argument(
        "--keep",
        choices=KEEP_MODES,
        default="auto",
        help="all: every record in memory; stream: t-digest figures and a record file; "
        "auto (default): all up to --max-records, then stream",
    )
    keep.add_argument(
        "--max-records",
        type=int,
        default=DEFAULT_MAX_RECORDS,
        help=f"--keep auto: records kept in memory (default {DEFAULT_MAX_RECORDS:,})",
    )
    keep.add_argument(
        "--records-dir",
        metavar="DIR",
        help="where a streamed run writes its records (Arrow IPC; default: a temporary folder)",
    )
    parser.add_argument("--progress", type=float, default=5.0, help="progress line every S s")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def _window(text: str | None) -> tuple[float, float] | None:
    """``START:END`` seconds (END may be empty for the trace's end)."""
    if text is None:
        return None
    start, sep, end = text.partition(":")
    if not sep:
        raise ValueError(f"--window {text!r} is not START:END")
    return float(start or 0), float(end) if end else math.inf


def build_schedule(args: argparse.Namespace, trace: Trace | None) -> Schedule:
    """The schedule the options ask for."""
    if args.schedule is not None:
        return schedule_from_text(args.schedule)
    if args.max_concurrency is not None and args.rate is None and trace is None:
        raise ValueError("--max-concurrency goes with --rate or --trace")
    if trace is not None:
        return TraceTimes(
            trace.load(), args.speed, _window(args.window), max_concurrency=args.max_concurrency
        )
    if args.rate is not None:
        cap = args.max_concurrency
        if args.arrival == "constant":
            return Constant(args.rate, max_concurrency=cap)
        if args.arrival == "gamma":
            return Gamma(args.rate, args.burstiness, seed=args.seed, max_concurrency=cap)
        return Poisson(args.rate, seed=args.seed, max_concurrency=cap)
    return ClosedLoop(args.concurrency, args.ramp)


def build_workload(args: argparse.Namespace, trace: Trace | None) -> Workload:
    """The workload the options ask for."""
    if args.workload is not None:
        built: Workload = workload_from_text(args.workload)
        return built
    if trace is not None:
        return trace
    if args.dataset is not None:
        return Dataset(
            args.dataset,
            args.dataset_format,
            sample=args.sample,
            seed=args.seed,
            ignore_eos=args.ignore_eos,
            output_tokens=args.max_tokens,
        )
    if args.conversations is not None:
        synthetic = args.conversations == "synthetic"
        return Conversations(
            None if synthetic else args.conversations,
            args.dataset_format,
            turns=args.turns,
            output_tokens=args.max_tokens,
            think_s=args.think,
            seed=args.seed,
            ignore_eos=args.ignore_eos,
        )
    output = args.max_tokens or 64
    if args.prompt is not None:
        return Prompts(args.prompt, output, ignore_eos=args.ignore_eos)
    return Synthetic(
        args.prompt_tokens,
        output,
        ignore_eos=args.ignore_eos,
        varied=not args.same_prompt,
        seed=args.seed,
        prompts=max(1, min(args.requests or 256, 256)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        slos = parse_slos(args.slo)
    except SLOSyntaxError as exc:
        print(f"gpuinfer-load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    key = os.environ.get(args.api_key_env) or None
    try:
        trace = (
            Trace(
                args.trace,
                args.trace_format,
                block_tokens=args.block_tokens,
                ignore_eos=args.ignore_eos,
                seed=args.seed,
            )
            if args.trace is not None
            else None
        )
        schedule = build_schedule(args, trace)
        workload = build_workload(args, trace)
        counter = (
            prompts.token_counter_for(
                args.endpoint,
                args.model,
                model_dir=args.tokenizer,
                headers={"Authorization": f"Bearer {key}"} if key else None,
            )
            if args.tokenizer
            else None
        )
        runner = LoadRunner(
            args.endpoint,
            args.model,
            api_key=key,
            endpoint=args.api,
            counter=counter,
            options=RunnerOptions(
                stream=not args.no_stream,
                timeouts=Timeouts(
                    args.connect_timeout, args.first_token_timeout, args.total_timeout
                ),
                processes=args.processes,
                progress=None if args.quiet or not math.isfinite(args.progress) else True,
                progress_interval_s=args.progress,
                retention=Retention(
                    keep=args.keep,
                    max_records=args.max_records,
                    records_dir=Path(args.records_dir) if args.records_dir else None,
                ),
            ),
        )
        limits = Limits(args.requests, args.duration, args.warmup, tuple(slos))
        result = runner.run(schedule, workload, limits)
    except (ValueError, prompts.PromptLengthError) as exc:
        print(f"gpuinfer-load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(result.summary_text())
    verdicts = result.judge(slos, allow_errors=args.allow_errors)
    for verdict in verdicts:
        print(verdict.line())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result.to_dict(), out, indent=1)
    if any(v.failed for v in verdicts):
        return EXIT_SLO_FAILED
    return EXIT_NOT_JUDGED if any(not v.judged for v in verdicts) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
