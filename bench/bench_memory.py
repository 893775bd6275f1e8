"""How the load client's memory grows with the number of requests (a script, not a test).

Each size runs in a fresh process (so its peak RSS is its own): a closed loop of 64 against a
zero-latency simulator (16-token streamed replies), every record kept as the engine keeps them
today. Prints the peak RSS and the bytes per request. With ``--sketches`` it also compares the
streaming percentile structures a bounded-memory client could use (add cost per value, worst
relative error from p50 to p99.9 on a latency-like distribution, size), where installed.

Usage: ``python bench/bench_memory.py [--sizes 20000,200000] [--sketches]``; 2,000,000 requests
keep about 5 GB of records today: add it to ``--sizes`` only on a machine with the memory free.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

MODEL = "sim-model"


def one_size(requests: int) -> None:
    """Run ``requests`` requests in this process and print its peak RSS (child mode)."""
    from pytest_gpuinfer.load.runner import Limits, LoadRunner, RunnerOptions
    from pytest_gpuinfer.load.schedule import ClosedLoop
    from pytest_gpuinfer.load.workloads import Prompts
    from pytest_gpuinfer.sim import run_in_process

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with run_in_process("--ttft-ms", "0", "--itl-ms", "0", "--output-tokens", "16") as url:
        runner = LoadRunner(url, MODEL, options=RunnerOptions(gauge_interval_s=None))
        started = time.perf_counter()
        result = runner.run(ClosedLoop(64), Prompts(output_tokens=16), Limits(requests=requests))
        elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        f"{requests:>9,} requests: peak RSS {peak / 1024:8.0f} MB "
        f"({(peak - base) * 1024 / requests:6.0f} bytes per request over the "
        f"{base / 1024:.0f} MB at start), {result.summary.completed:,} completed in "
        f"{elapsed:.0f} s",
        flush=True,
    )


def sketches(values_count: int = 1_000_000) -> None:
    """Add cost, accuracy and size of the streaming percentile structures installed here."""
    import numpy as np

    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=np.log(0.05), sigma=0.6, size=values_count)
    exact = np.percentile(values, [50, 90, 99, 99.9])
    listed = values.tolist()
    print(f"\n== streaming percentiles: {values_count:,} latency-like values (lognormal, 50 ms) ==")

    def measure(name: str, build: Callable[[list[float], Any], Any], quantile: Any) -> None:
        """Time ``build`` over the values, then print its cost, worst error and size."""
        started = time.perf_counter()
        sketch = build(listed, values)
        cost = (time.perf_counter() - started) / values_count * 1e9
        found = [quantile(sketch, q) for q in (0.5, 0.9, 0.99, 0.999)]
        error = max(abs(a - b) / b for a, b in zip(found, exact, strict=True))
        try:
            size = f"{len(pickle.dumps(sketch)) / 1024:.0f} KiB pickled"
        except (TypeError, pickle.PicklingError):
            size = "not picklable"
        print(f"{name:30s} {cost:6.0f} ns per value, worst error p50..p99.9 {error:.3%}, {size}")

    if importlib.util.find_spec("hdrh"):
        from hdrh.histogram import HdrHistogram

        def hdr(listed: list[float], _: Any) -> Any:
            """An HDR histogram of microseconds, one value at a time."""
            histogram = HdrHistogram(1, 3_600_000_000, 3)
            for value in listed:
                histogram.record_value(int(value * 1e6))
            return histogram

        measure(
            "hdrhistogram (one by one)", hdr, lambda h, q: h.get_value_at_percentile(q * 100) / 1e6
        )
    if importlib.util.find_spec("ddsketch"):
        from ddsketch import DDSketch

        def dd(listed: list[float], _: Any) -> Any:
            """A DDSketch at 0.5 % relative accuracy, one value at a time."""
            sketch = DDSketch(relative_accuracy=0.005)
            for value in listed:
                sketch.add(value)
            return sketch

        measure("ddsketch (one by one)", dd, lambda s, q: s.get_quantile_value(q))
    if importlib.util.find_spec("fastdigest"):
        from fastdigest import TDigest

        def fast(_: list[float], array: Any) -> Any:
            """A fastdigest t-digest merged from batches of 4,096 array values."""
            digest = TDigest()
            for start in range(0, len(array), 4096):
                digest = digest.merge(TDigest.from_values(array[start : start + 4096]))
            return digest

        measure("fastdigest (batches of 4096)", fast, lambda d, q: d.quantile(q))
    if importlib.util.find_spec("crick"):
        from crick import TDigest as CrickDigest

        def crick(listed: list[float], _: Any) -> Any:
            """A crick t-digest, one value at a time."""
            digest = CrickDigest()
            for value in listed:
                digest.add(value)
            return digest

        measure("crick (one by one)", crick, lambda d, q: d.quantile(q))


def main() -> int:
    """Run each size in its own process, then the sketch comparison if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,200000", help="request counts, comma-separated")
    parser.add_argument("--sketches", action="store_true", help="compare percentile sketches")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_size(args.one)
        return 0
    print(f"load-client memory; load average {os.getloadavg()}")
    for size in (int(s) for s in args.sizes.split(",") if s):
        subprocess.run([sys.executable, __file__, "--one", str(size)], check=True)
    if args.sketches:
        sketches()
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
