"""``gpuinfer-load``: run a load test against an OpenAI-compatible server from the command line.

Prints the summary table, the load engine's self-check and SLO verdicts. Exit status: 0 when every
SLO holds and no request failed, 1 when an SLO fails or any request failed (unless an error_rate
SLO or --allow-errors allows failures), 2 on a usage error. The API key is read from an
environment variable (``--api-key-env``, default ``OPENAI_API_KEY``), never from the command
line, where other users of the machine could read it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from pytest_gpuinfer.load import prompts
from pytest_gpuinfer.load.client import Timeouts
from pytest_gpuinfer.load.runner import LoadRunner
from pytest_gpuinfer.load.schedule import ARRIVAL_KINDS
from pytest_gpuinfer.metrics.slo import SLOSyntaxError, parse_slos

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


def _exact_prompts(args: argparse.Namespace) -> prompts.PromptSet:
    """Prompts of exactly --prompt-tokens target tokens; says on stderr how they were counted."""
    key = os.environ.get(args.api_key_env)
    counter = prompts.token_counter_for(
        args.endpoint,
        args.model,
        model_dir=args.tokenizer,
        headers={"Authorization": f"Bearer {key}"} if key else None,
    )
    try:
        prompt_set = prompts.build_prompts(
            counter,
            args.prompt_tokens,
            count=max(1, min(args.requests or 256, 256)),
            varied=not args.same_prompt,
            seed=args.seed,
            endpoint=args.api,
        )
    except prompts.PromptLengthError as exc:
        raise ValueError(str(exc)) from None
    print(f"gpuinfer-load: {prompt_set.describe()}", file=sys.stderr)
    return prompt_set


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
    prompt.add_argument(
        "--prompt-tokens",
        type=int,
        default=32,
        help="prompt length in tokens of the target's tokenizer, before the chat template",
    )
    parser.add_argument(
        "--tokenizer", metavar="DIR", help="model directory to count tokens with if no /tokenize"
    )
    parser.add_argument(
        "--same-prompt", action="store_true", help="repeat one prompt instead of varied ones"
    )
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
    parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="exit 0 even when requests failed (default: any failed request exits 1)",
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
            prompt=args.prompt if args.prompt is not None else _exact_prompts(args),
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
    verdicts = result.judge(slos, allow_errors=args.allow_errors)
    for verdict in verdicts:
        print(f"{'PASS' if verdict.passed else 'FAIL'}  {verdict.message}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result.to_dict(), out, indent=1)
    return EXIT_SLO_FAILED if any(not v.passed for v in verdicts) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
