"""How the load client's memory grows with the number of requests (a script, not a test).

Each size runs in a fresh process (so its peak RSS is its own): a closed loop of 64 against a
zero-latency simulator (16-token streamed replies), with the engine's retention (``--keep``:
``auto`` by default, which keeps every record up to 50,000 requests and streams past that;
``all`` keeps every record as the engine did before). Prints the peak RSS, the RSS at each
quarter of the run (flat once streaming: nothing grows with the requests), bytes per request and
the time taken. ``--sketches`` compares streaming percentile structures on latency-like
distributions (cost per value, error per percentile, size); ``--spill`` compares record file
formats (cost per record, bytes per record).

Usage: ``python bench/bench_memory.py [--sizes 20000,200000,2000000] [--keep auto|all|stream]
[--sketches] [--spill]``. 2,000,000 requests take about 15 minutes on two busy cores; with
``--keep all`` they keep about 4.5 GB of records.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

MODEL = "sim-model"


def _rss_mb() -> float:
    """This process's resident memory now (MB)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_size(requests: int, keep: str) -> None:
    """Run ``requests`` requests in this process and print its peak RSS (child mode)."""
    from pytest_gpuinfer.load.runner import Limits, LoadRunner, Retention, RunnerOptions
    from pytest_gpuinfer.load.schedule import ClosedLoop
    from pytest_gpuinfer.load.workloads import Prompts
    from pytest_gpuinfer.sim import run_in_process

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        """RSS every half second while the run goes."""
        while not done.wait(0.5):
            samples.append((time.perf_counter(), _rss_mb()))

    with run_in_process("--ttft-ms", "0", "--itl-ms", "0", "--output-tokens", "16") as url:
        options = RunnerOptions(gauge_interval_s=None, retention=Retention(keep=keep))
        runner = LoadRunner(url, MODEL, options=options)
        watcher = threading.Thread(target=sample, daemon=True)
        started = time.perf_counter()
        watcher.start()
        result = runner.run(ClosedLoop(64), Prompts(output_tokens=16), Limits(requests=requests))
        elapsed = time.perf_counter() - started
        done.set()
        watcher.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    quarters = []
    for share in (0.25, 0.5, 0.75, 1.0):
        at = started + share * elapsed
        before = [mb for t, mb in samples if t <= at]
        quarters.append(f"{before[-1]:.0f}" if before else "-")
    kept = "every record" if result.streamed is None else result.streamed.describe()
    print(
        f"{requests:>9,} requests: peak RSS {peak / 1024:6.0f} MB "
        f"({(peak - base) * 1024 / requests:6.0f} bytes per request over the "
        f"{base / 1024:.0f} MB at start); RSS at 1/4, 1/2, 3/4, end of the run "
        f"{'/'.join(quarters)} MB; {result.summary.completed:,} completed in {elapsed:.0f} s "
        f"({result.summary.request_throughput:.0f} req/s, client CPU "
        f"{result.self_check.cpu_s / requests * 1000:.3f} s per 1,000 requests); kept: {kept}",
        flush=True,
    )


QUANTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def latency_shapes(rng: Any, n: int) -> dict[str, Any]:
    """Latency-like value sets: the shapes a load test meets (seconds)."""
    import numpy as np

    fast = rng.lognormal(np.log(0.02), 0.2, n)
    slow = rng.lognormal(np.log(0.8), 0.3, n)
    itl = rng.normal(0.010, 0.0005, n).clip(0.001)
    return {
        "lognormal TTFT, 50 ms": rng.lognormal(np.log(0.05), 0.6, n),
        "bimodal 96% 20 ms, 4% 800 ms": np.where(rng.random(n) < 0.04, slow, fast),
        "Pareto tail (a=1.5) from 30 ms": 0.03 * (1 + rng.pareto(1.5, n)),
        "ITL 10 ms, 0.5% stalls of 200 ms": np.where(
            rng.random(n) < 0.005, rng.uniform(0.15, 0.25, n), itl
        ),
        "whole milliseconds (ties)": np.round(rng.lognormal(np.log(0.05), 0.5, n), 3),
        "drifting 20 -> 200 ms, in order": np.sort(rng.lognormal(np.log(0.02), 0.3, n))
        * np.linspace(1, 10, n),
        "queue time, exponential 50 us": rng.exponential(50e-6, n),
    }


def sketches(values_count: int = 1_000_000) -> None:
    """Cost, accuracy and size of the streaming percentile structures installed here, fed the
    way the load engine feeds them (arrays of 512 values), and the bounds of the chosen one."""
    import numpy as np

    rng = np.random.default_rng(1)
    batch = 512

    def feed(update: Callable[[Any], None], values: Any) -> None:
        """Feed ``values`` in batches."""
        for start in range(0, len(values), batch):
            update(values[start : start + batch])

    builders: dict[str, Callable[[Any], tuple[Any, Callable[[float], float]]]] = {}
    if importlib.util.find_spec("fastdigest"):
        from fastdigest import TDigest

        def fast(values: Any) -> tuple[Any, Callable[[float], float]]:
            digest = TDigest(1000)
            feed(digest.batch_update, values)
            return digest, lambda q: digest.quantile(q / 100)

        builders["fastdigest 1000 (batches)"] = fast
    if importlib.util.find_spec("datasketches"):
        import datasketches

        def req(values: Any) -> tuple[Any, Callable[[float], float]]:
            sketch = datasketches.req_floats_sketch(24, True)
            feed(lambda chunk: sketch.update(chunk.astype(np.float32)), values)
            return sketch, lambda q: sketch.get_quantile(q / 100)

        def kll(values: Any) -> tuple[Any, Callable[[float], float]]:
            sketch = datasketches.kll_doubles_sketch(400)
            feed(sketch.update, values)
            return sketch, lambda q: sketch.get_quantile(q / 100)

        builders["datasketches REQ 24 hra (batches)"] = req
        builders["datasketches KLL 400 (batches)"] = kll
    if importlib.util.find_spec("ddsketch"):
        from ddsketch import DDSketch

        def dd(values: Any) -> tuple[Any, Callable[[float], float]]:
            sketch = DDSketch(relative_accuracy=0.005)
            for value in values.tolist():
                sketch.add(value)
            return sketch, lambda q: sketch.get_quantile_value(q / 100)

        builders["ddsketch 0.5% (one by one)"] = dd
    if importlib.util.find_spec("hdrh"):
        from hdrh.histogram import HdrHistogram

        def hdr(values: Any) -> tuple[Any, Callable[[float], float]]:
            histogram = HdrHistogram(1, 3_600_000_000, 3)
            for value in (values * 1e6).astype(np.int64).tolist():
                histogram.record_value(max(1, value))
            return histogram, lambda q: histogram.get_value_at_percentile(q) / 1e6

        builders["hdrhistogram 3 digits (one by one)"] = hdr
    if importlib.util.find_spec("crick"):
        from crick import TDigest as CrickDigest

        def crick(values: Any) -> tuple[Any, Callable[[float], float]]:
            digest = CrickDigest()
            feed(digest.update, values)
            return digest, lambda q: digest.quantile(q / 100)

        builders["crick (batches)"] = crick
    print(
        f"\n== streaming percentiles: {values_count:,} values per shape, relative error at "
        "p50/p90/p95/p99/p99.9 =="
    )
    worst: dict[str, float] = {}
    for shape, values in latency_shapes(rng, values_count).items():
        exact = np.percentile(values, QUANTILES)
        print(f"-- {shape}: exact p50 {exact[0] * 1e3:.3f} ms, p99.9 {exact[-1] * 1e3:.3f} ms")
        for name, build in builders.items():
            started = time.perf_counter()
            sketch, quantile = build(values)
            cost = (time.perf_counter() - started) / values_count * 1e9
            errors = [(quantile(q) - e) / e for q, e in zip(QUANTILES, exact, strict=True)]
            worst[name] = max(worst.get(name, 0.0), *(abs(x) for x in errors))
            try:
                size = f"{len(pickle.dumps(sketch)) / 1024:.0f} KiB"
            except (TypeError, pickle.PicklingError):
                size = "-"
            cells = " ".join(f"{x:+7.3%}" for x in errors)
            print(f"   {name:36s} {cost:5.0f} ns/value  {cells}  {size}")
    print("worst error over every shape and percentile:")
    for name, error in worst.items():
        print(f"   {name:36s} {error:.3%}")
    bounds_coverage(rng)


def bounds_coverage(rng: Any) -> None:
    """How often the exact percentile lies within LatencySketch.bounds, and their width."""
    import numpy as np

    from pytest_gpuinfer.metrics.sketch import LatencySketch

    inside = total = 0
    widths = []
    for size in (5_000, 50_000, 300_000):
        for parts in (1, 3):
            for values in latency_shapes(rng, size).values():
                sketches = [LatencySketch() for _ in range(parts)]
                for i, start in enumerate(range(0, size, 512)):
                    sketches[i % parts].add(values[start : start + 512])
                for other in sketches[1:]:
                    sketches[0].merge(other)
                for q, exact in zip(QUANTILES, np.percentile(values, QUANTILES), strict=True):
                    lo, hi = sketches[0].bounds(q / 100)
                    total += 1
                    inside += lo <= exact <= hi
                    widths.append((hi - lo) / exact)
    print(
        f"LatencySketch.bounds held the exact percentile {inside} times of {total} (3 sizes, "
        f"1 or 3 merged sketches, 7 shapes, 5 percentiles); width median "
        f"{np.median(widths):.2%}, p95 {np.percentile(widths, 95):.2%} of the value"
    )


def spill_formats(count: int = 200_000, batch: int = 1024) -> None:
    """Cost per record and bytes per record of the record file formats that could hold them."""
    import numpy as np

    from pytest_gpuinfer.metrics import record_files
    from pytest_gpuinfer.metrics.records import RequestRecord

    def record(i: int) -> RequestRecord:
        t = 1000.0 + i * 0.001
        return RequestRecord(
            i, t, sent=t + 1e-5, first_byte=t + 0.02, first_token=t + 0.021, end=t + 0.2,
            chunk_times=[t + 0.021 + k * 0.01 + (i * k % 7) * 1e-5 for k in range(16)],
            chunk_tokens=[1] * 16, status=200, prompt_tokens=32, completion_tokens=16,
            finish_reason="length", request_id=f"gpuinfer-{i}", asked_input_tokens=32,
            asked_output_tokens=16,
        )  # fmt: skip

    records = [record(i) for i in range(batch)]
    print(f"\n== record files: {count:,} records of 16 chunks, in batches of {batch} ==")
    folder = tempfile.mkdtemp(prefix="bench-spill-")
    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        schema = record_files._schema()

        def columns() -> dict[str, list[Any]]:
            return {name: [getattr(r, name) for r in records] for name in record_files.FIELDS}

        def arrow(path: str, compression: str | None) -> None:
            options = ipc.IpcWriteOptions(compression=compression)
            with ipc.new_file(path, schema, options=options) as writer:
                for _ in range(count // batch):
                    writer.write_batch(pa.RecordBatch.from_pydict(columns(), schema=schema))

        def parquet(path: str, compression: str) -> None:
            with pq.ParquetWriter(path, schema, compression=compression) as writer:
                for _ in range(count // batch):
                    writer.write_batch(pa.RecordBatch.from_pydict(columns(), schema=schema))

        def npz(path: str, _: str | None) -> None:
            os.mkdir(path)
            for part in range(count // batch):
                arrays = {
                    name: np.asarray([np.nan if v is None else v for v in values], dtype=object)
                    if name in record_files._STRINGS
                    else np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
                    for name, values in columns().items()
                    if name not in record_files._LISTS
                }
                arrays["chunk_times"] = np.concatenate([r.chunk_times for r in records])
                np.savez(os.path.join(path, f"{part:06d}.npz"), **arrays)

        for name, write, compression in (
            ("Arrow IPC, zstd (chosen)", arrow, "zstd"),
            ("Arrow IPC, uncompressed", arrow, None),
            ("Parquet, zstd", parquet, "zstd"),
            ("Parquet, snappy", parquet, "snappy"),
            ("numpy .npz per batch", npz, None),
        ):
            path = os.path.join(folder, name.replace(" ", "_").replace(",", ""))
            started = time.perf_counter()
            write(path, compression)  # type: ignore[operator]
            cost = (time.perf_counter() - started) / count * 1e6
            size = (
                sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
                if os.path.isdir(path)
                else os.path.getsize(path)
            )
            print(f"   {name:28s} {cost:5.2f} us per record, {size / count:6.0f} bytes per record")
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    """Run each size in its own process, then the comparisons asked for."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,200000", help="request counts, comma-separated")
    parser.add_argument("--keep", default="auto", choices=("auto", "all", "stream"))
    parser.add_argument("--sketches", action="store_true", help="compare percentile sketches")
    parser.add_argument("--spill", action="store_true", help="compare record file formats")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_size(args.one, args.keep)
        return 0
    print(f"load-client memory (--keep {args.keep}); load average {os.getloadavg()}")
    for size in (int(s) for s in args.sizes.split(",") if s):
        command = [sys.executable, __file__, "--one", str(size), "--keep", args.keep]
        subprocess.run(command, check=True)
        print(f"   load average {os.getloadavg()}", flush=True)
    if args.sketches:
        sketches()
    if args.spill:
        spill_formats()
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
