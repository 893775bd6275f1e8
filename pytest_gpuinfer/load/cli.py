"""``gpuinfer-load``: run a load test against an OpenAI-compatible server from the command line.

Prints the summary table, the load engine's self-check and SLO verdicts. Exit status: 0 when every
SLO holds, 1 when one fails, 2 on a usage error. The API key is read from an environment variable
(``--api-key-env``, default ``OPENAI_API_KEY``), never from the command line, where other users of
the machine could read it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from pytest_gpuinfer.load.client import Timeouts
from pytest_gpuinfer.load.runner import LoadRunner
from pytest_gpuinfer.load.schedule import ARRIVAL_KINDS
from pytest_gpuinfer.metrics.slo import SLOSyntaxError, evaluate_all, parse_slos

EXIT_OK = 0
EXIT_SLO_FAILED = 1
EXIT_USAGE = 2

_PROMPT_WORDS = (
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven"),
    *("old", "sailors", "sing", "about", "distant", "harbours", "and", "bright", "lanterns"),
    *("in", "the", "cold", "night"),
)


def synthetic_prompt(words: int) -> str:
    """A prompt of ``words`` common words (about one token each with most tokenizers)."""
    return " ".join(_PROMPT_WORDS[i % len(_PROMPT_WORDS)] for i in range(max(1, words)))


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
    load = parser.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop: requests in flight")
    load.add_argument("--rate", type=float, help="open loop: mean requests per second")
    parser.add_argument(
        "--max-concurrency", type=int, help="with --rate: cap on requests in flight"
    )
    parser.add_argument("--arrival", choices=ARRIVAL_KINDS, default="poisson")
    parser.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape (1 = Poisson, < 1 burstier)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, help="request cap")
    parser.add_argument("--duration", type=float, help="time cap in seconds")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds left out of the stats")
    parser.add_argument("--max-tokens", type=int, default=64)
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-tokens", type=int, default=32, help="synthetic prompt length")
    parser.add_argument("--no-stream", action="store_true", help="ask for whole responses")
    parser.add_argument(
        "--ignore-eos", action="store_true", help="send ignore_eos (vLLM, SGLang) for fixed lengths"
    )
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--first-token-timeout", type=float, default=120.0)
    parser.add_argument("--total-timeout", type=float, default=600.0)
    parser.add_argument(
        "--slo", action="append", default=[], metavar="EXPR", help="e.g. 'ttft_p95<500ms'"
    )
    parser.add_argument("--json", metavar="OUT", help="write the full result as JSON here")
    parser.add_argument("--progress", type=float, default=5.0, help="progress line every S s")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        slos = parse_slos(args.slo)
    except SLOSyntaxError as exc:
        print(f"gpuinfer-load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.requests is None and args.duration is None:
        parser.print_usage(sys.stderr)
        print("gpuinfer-load: give --requests or --duration (or both)", file=sys.stderr)
        return EXIT_USAGE
    if args.max_concurrency is not None and args.rate is None:
        print("gpuinfer-load: --max-concurrency goes with --rate", file=sys.stderr)
        return EXIT_USAGE
    extra_body: dict[str, Any] | None = {"ignore_eos": True} if args.ignore_eos else None
    try:
        runner = LoadRunner(
            args.endpoint,
            args.model,
            api_key=os.environ.get(args.api_key_env) or None,
            endpoint=args.api,
            timeouts=Timeouts(args.connect_timeout, args.first_token_timeout, args.total_timeout),
        )
        result = runner.run(
            concurrency=args.concurrency if args.rate is None else args.max_concurrency,
            rate=args.rate,
            arrival=args.arrival,
            burstiness=args.burstiness,
            seed=args.seed,
            requests=args.requests,
            duration_s=args.duration,
            prompt=args.prompt if args.prompt is not None else synthetic_prompt(args.prompt_tokens),
            max_tokens=args.max_tokens,
            stream=not args.no_stream,
            warmup_s=args.warmup,
            processes=args.processes,
            extra_body=extra_body,
            slos=slos,
            progress=None if args.quiet or not math.isfinite(args.progress) else True,
            progress_interval_s=args.progress,
        )
    except ValueError as exc:
        print(f"gpuinfer-load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(result.summary_text())
    verdicts = evaluate_all(slos, result.summary)
    for verdict in verdicts:
        print(f"{'PASS' if verdict.passed else 'FAIL'}  {verdict.message}")
    if args.json:
        data = result.to_dict()
        data["slos"] = [
            {
                "slo": v.slo.text,
                "passed": v.passed,
                "measured": v.measured if math.isfinite(v.measured) else None,
                "count": v.count,
                "message": v.message,
            }
            for v in verdicts
        ]
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1)
    return EXIT_SLO_FAILED if any(not v.passed for v in verdicts) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
