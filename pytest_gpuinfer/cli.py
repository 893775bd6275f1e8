"""``gpuinfer``: run a shipped suite from any directory, e.g. ``gpuinfer compat --endpoint URL``.

A thin wrapper around pytest: ``gpuinfer SUITE [pytest arguments]`` is
``pytest --pyargs pytest_gpuinfer.suites.SUITE [pytest arguments]`` with the current directory
as rootdir and no cache folder written, so it works the same from an empty directory, a CI
workspace or a checkout. ``gpuinfer list`` names the suites and what each needs.
``gpuinfer serve`` launches a target the way the suites do (the built-in model on vLLM by
default) and keeps it up until Ctrl-C or SIGTERM, for ``--endpoint`` runs and the Action.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from pytest_gpuinfer.suites import SUITES

SUITE_NOTES: dict[str, str] = {
    "compat": "API, model and environment checks (any OpenAI-compatible server)",
    "perf": "latency percentiles under SLOs, matrix, sweeps, regression against a baseline",
    "load": "burst shapes with recovery and drop verdicts; locust with the `load` extra",
    "memory": "VRAM/RSS leak checks and OOM boundaries (launches servers: not for --endpoint)",
    "batch": "offline batch inference: vLLM's LLM, Ray Data with the `ray` extra",
    "docker": "the Docker target: container lifecycle and networking (`docker` extra)",
    "faults": "network faults through the fault proxy; kills of engine processes with MTTR",
}
"""One line per suite for ``gpuinfer list``."""


def pytest_args(suite: str, extra: Sequence[str]) -> list[str]:
    """The pytest command line that runs ``suite`` (``all``: every suite) with ``extra``; the
    short summary lists skips and expected failures with their reasons (what was not checked)."""
    names = SUITES if suite == "all" else (suite,)
    packages = [f"pytest_gpuinfer.suites.{name}" for name in names]
    return ["--pyargs", *packages, "--rootdir=.", "-p", "no:cacheprovider", "-rfEsxX", *extra]


def serve(argv: Sequence[str]) -> int:
    """Launch a target and keep it up until SIGINT/SIGTERM; 1 with the reason if it fails."""
    parser = argparse.ArgumentParser(
        prog="gpuinfer serve",
        description="Launch an inference server the way the suites do and keep it running.",
    )
    parser.add_argument("--engine", default="vllm", help="vllm (default), llamacpp, sim, ...")
    parser.add_argument("--model", default=None, help="model path or builtin:NAME")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: free)")
    parser.add_argument("--engine-arg", action="append", default=[], help="repeatable")
    parser.add_argument("--timeout", type=float, default=600.0, help="readiness deadline (s)")
    parser.add_argument("--url-file", type=Path, help="write the server's base URL here once up")
    parser.add_argument(
        "--nice",
        type=int,
        choices=range(20),
        metavar="N",
        default=0,
        help="CPU priority 0-19 of the server, its autogroup included (default 0)",
    )
    args = parser.parse_args(argv)
    from pytest_gpuinfer.targets import TargetError
    from pytest_gpuinfer.targets.base import LaunchContext
    from pytest_gpuinfer.targets.process import free_port
    from pytest_gpuinfer.targets.registry import builtin_registry

    registry = builtin_registry()
    if args.engine not in registry.names():
        parser.error(f"--engine {args.engine!r} is not known; choose one of {registry.names()}")
    context = LaunchContext(
        engine=args.engine,
        port=args.port or free_port("127.0.0.1"),
        work_dir=Path(tempfile.mkdtemp(prefix="gpuinfer-serve-")),
        model=args.model,
        engine_args=tuple(args.engine_arg),
        timeout_s=args.timeout,
        server_nice=args.nice,
    )
    launcher = registry.get(args.engine)
    problem = launcher.check(context)
    if problem:
        parser.error(problem)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"gpuinfer serve: starting {launcher.describe(context)}", flush=True)
    try:
        server = launcher.launch(context)
    except TargetError as exc:
        print(f"gpuinfer serve: {exc}", file=sys.stderr, flush=True)
        return 1
    try:
        priority = f"; CPU priority {server.cpu_priority}" if server.cpu_priority else ""
        print(
            f"gpuinfer serve: {server.describe()} is ready{priority}; Ctrl-C stops it", flush=True
        )
        if args.url_file is not None:
            args.url_file.write_text(server.base_url + "\n")
        while not stop.wait(1.0):
            if not server.alive():
                print(f"gpuinfer serve: the server exited\n{server.log_tail(40)}", flush=True)
                return 1
    finally:
        if server.process is not None:
            server.process.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one shipped suite (or all) with pytest; the exit status is pytest's."""
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["serve"]:
        return serve(given[1:])
    parser = argparse.ArgumentParser(
        prog="gpuinfer",
        description="Run a pytest-gpuinfer suite against your inference stack. Arguments after "
        "the suite go to pytest (e.g. --endpoint URL, --model PATH, --gpu 0, -m, -k).",
        epilog="Examples: gpuinfer compat --endpoint http://127.0.0.1:8000 | "
        "gpuinfer perf --gpu 0 --model=/models/m --slo 'ttft_p95<500ms'",
    )
    parser.add_argument("suite", choices=[*SUITES, "all", "list", "serve"], help="the suite to run")
    args, extra = parser.parse_known_args(given)
    if args.suite == "list":
        for name in SUITES:
            print(f"{name:8} {SUITE_NOTES.get(name, '')}")
        return 0
    import pytest

    return int(pytest.main(pytest_args(args.suite, extra)))


if __name__ == "__main__":
    sys.exit(main())
