"""Ways to start the simulator: in a background thread, as its own process, from the command
line (``python -m pytest_gpuinfer.sim``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

from pytest_gpuinfer.clock import new_event_loop, reduce_timer_slack
from pytest_gpuinfer.sim.config import LISTENING_LINE, SimConfig
from pytest_gpuinfer.sim.server import SimServer


@contextlib.contextmanager
def run_in_process(*cli_args: str, cpu: int | None = None) -> Iterator[str]:
    """Run the simulator CLI as its own process (optionally pinned to ``cpu``); yield its URL.

    ``cli_args`` are the command-line flags (``--ttft-ms 50 ...``). A process has its own GIL, so
    this is the mode for timing-grade work: benchmarks and accuracy tests.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest_gpuinfer.sim", "--port", "0", *cli_args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        prefix = LISTENING_LINE.split("{url}")[0]
        if not line.startswith(prefix):
            raise RuntimeError(f"the simulator did not start (exit {process.poll()}): {line!r}")
        if cpu is not None:
            os.sched_setaffinity(process.pid, {cpu})
        yield line[len(prefix) :].split()[0]
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def run_in_thread(
    config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """Run a simulator on its own event loop in a background thread; yields its base URL.

    The thread shares the GIL with the caller, so a busy caller delays the simulator's sends;
    for benchmark-grade timing run it as a process (``python -m pytest_gpuinfer.sim``).
    """
    started = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        reduce_timer_slack()
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        server = SimServer(config)
        try:
            loop.run_until_complete(server.start(host, port))
        except BaseException as error:
            state["error"] = error
            started.set()
            loop.close()
            return
        state["server"] = server
        state["loop"] = loop
        started.set()
        try:
            loop.run_until_complete(server.wait_closed())
            loop.run_until_complete(asyncio.sleep(0))  # let transports finish closing
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="gpuinfer-sim", daemon=True)
    thread.start()
    if not started.wait(timeout=30):
        raise RuntimeError("the simulator thread did not start within 30 s")
    if "error" in state:
        raise state["error"]
    server: SimServer = state["server"]
    loop: asyncio.AbstractEventLoop = state["loop"]
    try:
        yield server.base_url
    finally:
        with contextlib.suppress(RuntimeError):  # the loop is gone already after a crash
            loop.call_soon_threadsafe(lambda: loop.create_task(server.close()))
        thread.join(timeout=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; they mirror the fields of SimConfig."""
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m pytest_gpuinfer.sim",
        description="OpenAI-compatible inference server SIMULATOR (not a real engine).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ttft-ms", type=float, default=defaults.ttft_s * 1000)
    parser.add_argument("--itl-ms", type=float, default=defaults.itl_s * 1000)
    parser.add_argument("--tokens-per-chunk", type=int, default=defaults.tokens_per_chunk)
    parser.add_argument("--output-tokens", type=int, default=defaults.output_tokens)
    parser.add_argument("--max-num-seqs", type=int, default=defaults.max_num_seqs)
    parser.add_argument("--kv-token-budget", type=int, default=defaults.kv_token_budget)
    parser.add_argument("--error-rate", type=float, default=defaults.error_rate)
    parser.add_argument("--crash-after", type=int, default=defaults.crash_after)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--malformed-stream", action="store_true")
    parser.add_argument(
        "--slow-after",
        type=int,
        default=defaults.slow_after,
        help="after this many inference requests, run --slow-factor times slower",
    )
    parser.add_argument("--slow-factor", type=float, default=defaults.slow_factor)
    parser.add_argument(
        "--leak-kb-per-request",
        type=float,
        default=defaults.leak_kb_per_request,
        help="keep this much memory for good per inference request (a leak, on purpose)",
    )
    parser.add_argument(
        "--preempt-every",
        type=int,
        default=defaults.preempt_every,
        help="count a preemption in /metrics every N admitted requests (none is evicted)",
    )
    parser.add_argument("--max-model-len", type=int, default=defaults.max_model_len)
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--ttft-growth", type=float, default=defaults.ttft_growth, help="TTFT s added per s run"
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig described by parsed command-line options."""
    return SimConfig(
        ttft_s=args.ttft_ms / 1000,
        itl_s=args.itl_ms / 1000,
        tokens_per_chunk=args.tokens_per_chunk,
        output_tokens=args.output_tokens,
        max_num_seqs=args.max_num_seqs,
        kv_token_budget=args.kv_token_budget,
        error_rate=args.error_rate,
        crash_after=args.crash_after,
        hang=args.hang,
        malformed_stream=args.malformed_stream,
        slow_after=args.slow_after,
        slow_factor=args.slow_factor,
        leak_kb_per_request=args.leak_kb_per_request,
        preempt_every=args.preempt_every,
        max_model_len=args.max_model_len,
        model=args.model,
        seed=args.seed,
        ttft_growth=args.ttft_growth,
    )


async def _serve_until_signalled(config: SimConfig, host: str, port: int) -> None:
    """Serve as a process: announce the URL, stop cleanly on SIGTERM or SIGINT."""
    server = SimServer(config, exit_process_on_crash=True)
    await server.start(host, port)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    print(LISTENING_LINE.format(url=server.base_url), flush=True)
    waits = {
        asyncio.ensure_future(stop_requested.wait()),
        asyncio.ensure_future(server.wait_closed()),
    }
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pytest_gpuinfer.sim``."""
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"gpuinfer-sim: {error}", file=sys.stderr)
        return 2
    reduce_timer_slack()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(_serve_until_signalled(config, args.host, args.port))
    return 0
