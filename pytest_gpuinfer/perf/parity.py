"""This suite's load engine and ``vllm bench serve`` side by side: one server, one workload.

Both tools get the same workload: prompts of ``input_len`` tokens of the target's tokenizer (vLLM's
random dataset counts the same way, before the chat template), ``output_len`` tokens with
``ignore_eos``, the same concurrency (closed loop) or rate, the same number of requests. Runs
alternate between the tools so drift in machine speed hits both alike; compare only within one
run of this module, never across days.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_gpuinfer.load import prompts
from pytest_gpuinfer.load.client import UsageMode
from pytest_gpuinfer.load.gauges import DEFAULT_INTERVAL_S
from pytest_gpuinfer.load.runner import Limits, LoadResult, LoadRunner, RunnerOptions
from pytest_gpuinfer.load.schedule import ClosedLoop, Poisson, Schedule
from pytest_gpuinfer.load.workloads import Prompts
from pytest_gpuinfer.metrics.verdicts import Unjudged, Verdict, judged, not_judged


@dataclass(frozen=True)
class ParityWorkload:
    """What both tools send."""

    input_len: int = 128
    output_len: int = 64
    concurrency: int | None = 16
    rate: float | None = None
    num_prompts: int = 200
    ignore_eos: bool = True
    seed: int = 0


@dataclass(frozen=True)
class ToolFigures:
    """One tool's figures from one run (seconds; NaN where the tool gave none)."""

    tool: str
    request_throughput: float
    output_throughput: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    e2e_p50: float
    completed: int
    failed: int
    prompt_tokens_mean: float
    output_tokens_mean: float
    server_cpu_ms_per_request: float = math.nan
    """CPU time the server's whole process tree spent per completed request (noise-robust)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (NaN as None)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


class BenchUnavailable(RuntimeError):
    """``vllm bench serve`` cannot run here (vLLM not installed, or it failed; message says)."""


def run_vllm_bench(
    base_url: str,
    model: str,
    tokenizer_dir: str,
    workload: ParityWorkload,
    *,
    timeout_s: float = 600.0,
    label: str = "vllm bench serve",
) -> ToolFigures:
    """Run ``vllm bench serve`` in its own process against ``base_url``; return its figures."""
    with tempfile.TemporaryDirectory(prefix="gpuinfer-vllm-bench-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [
            sys.executable,
            "-m",
            "pytest_gpuinfer.perf.vllm_bench",
            "--json",
            str(out),
            "--",
            "--backend",
            "openai-chat",
            "--endpoint",
            "/v1/chat/completions",
            "--base-url",
            base_url,
            "--model",
            model,
            "--tokenizer",
            tokenizer_dir,
            "--dataset-name",
            "random",
            "--random-input-len",
            str(workload.input_len),
            "--random-output-len",
            str(workload.output_len),
            "--num-prompts",
            str(workload.num_prompts),
            "--seed",
            str(workload.seed),
            "--disable-tqdm",
            "--percentile-metrics",
            "ttft,tpot,itl,e2el",
            "--metric-percentiles",
            "50,99",
            "--ready-check-timeout-sec",
            "0",
        ]
        if workload.ignore_eos:
            argv.append("--ignore-eos")
        if workload.concurrency is not None:
            argv += ["--max-concurrency", str(workload.concurrency)]
        argv += ["--request-rate", str(workload.rate) if workload.rate else "inf"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            raise BenchUnavailable(f"vllm bench serve ran past {timeout_s:.0f} s") from None
        if done.returncode != 0 or not out.is_file():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise BenchUnavailable(f"vllm bench serve exited {done.returncode}:\n{tail}")
        data = json.loads(out.read_text())
    completed = int(data.get("completed") or 0)

    def ms(key: str) -> float:
        value = data.get(key)
        return float(value) / 1e3 if isinstance(value, (int, float)) else math.nan

    return ToolFigures(
        tool=label,
        request_throughput=float(data.get("request_throughput") or 0.0),
        output_throughput=float(data.get("output_throughput") or 0.0),
        ttft_p50=ms("p50_ttft_ms"),
        ttft_p99=ms("p99_ttft_ms"),
        tpot_p50=ms("p50_tpot_ms"),
        e2e_p50=ms("p50_e2el_ms"),
        completed=completed,
        failed=int(data.get("failed") or 0),
        prompt_tokens_mean=(data.get("total_input_tokens") or 0) / max(1, completed),
        output_tokens_mean=(data.get("total_output_tokens") or 0) / max(1, completed),
    )


def gpuinfer_figures(result: LoadResult, label: str = "gpuinfer-load") -> ToolFigures:
    """This suite's figures from a load result, in the same shape."""
    summary = result.summary
    completed = summary.completed
    return ToolFigures(
        tool=label,
        request_throughput=summary.request_throughput,
        output_throughput=summary.output_token_throughput,
        ttft_p50=summary.ttft.p50,
        ttft_p99=summary.ttft.p99,
        tpot_p50=summary.tpot.p50,
        e2e_p50=summary.e2e.p50,
        completed=completed,
        failed=summary.failed,
        prompt_tokens_mean=summary.prompt_tokens / max(1, completed),
        output_tokens_mean=summary.completion_tokens / max(1, completed),
    )


def workload_prompts(
    base_url: str,
    model: str,
    workload: ParityWorkload,
    *,
    tokenizer_dir: str | None = None,
    varied: bool = True,
) -> prompts.PromptSet:
    """The prompts this suite sends for ``workload`` (exact lengths of the target's tokenizer)."""
    counter = prompts.token_counter_for(base_url, model, model_dir=tokenizer_dir)
    return prompts.build_prompts(
        counter,
        workload.input_len,
        count=workload.num_prompts if varied else 1,
        varied=varied,
        seed=workload.seed,
    )


def run_gpuinfer(
    base_url: str,
    model: str,
    workload: ParityWorkload,
    prompt_set: Sequence[str],
    *,
    usage_mode: UsageMode = "final",
    gauges: bool = False,
    label: str = "gpuinfer-load",
) -> tuple[ToolFigures, LoadResult]:
    """Run this suite's load engine with ``workload``; return its figures and the full result.

    ``gauges`` polls the engine's /metrics during the run (off by default here: vllm bench does
    not, and each poll costs the server CPU and the client a thread holding the GIL).
    """
    runner = LoadRunner(
        base_url,
        model,
        options=RunnerOptions(
            usage_mode=usage_mode, gauge_interval_s=DEFAULT_INTERVAL_S if gauges else None
        ),
    )
    schedule: Schedule = (
        ClosedLoop(workload.concurrency)
        if workload.rate is None and workload.concurrency is not None
        else Poisson(workload.rate or 0.0, seed=workload.seed, max_concurrency=workload.concurrency)
    )
    result = runner.run(
        schedule,
        Prompts(
            tuple(prompt_set),
            workload.output_len,
            ignore_eos=workload.ignore_eos,
            input_tokens=getattr(prompt_set, "tokens", None),
        ),
        Limits(requests=workload.num_prompts),
    )
    return gpuinfer_figures(result, label), result


class ServerCPU:
    """Measures the CPU seconds a server's process tree spends over a block (psutil)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.seconds = math.nan
        self._start = math.nan

    def _total(self) -> float:
        """User + system CPU seconds of the process and its descendants, NaN when unknown."""
        if self.pid is None:
            return math.nan
        import psutil  # type: ignore[import-untyped,unused-ignore]

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return math.nan
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def __enter__(self) -> ServerCPU:
        self._start = self._total()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self._total() - self._start

    def per_request_ms(self, completed: int) -> float:
        """CPU milliseconds per completed request."""
        return self.seconds * 1e3 / completed if completed else math.nan


def with_cpu(figures: ToolFigures, cpu: ServerCPU) -> ToolFigures:
    """``figures`` with the server CPU per request filled in."""
    from dataclasses import replace

    return replace(figures, server_cpu_ms_per_request=cpu.per_request_ms(figures.completed))


def _cell(value: float, scale: float, digits: int) -> str:
    """A number for the table ('-' for NaN)."""
    return "-" if not math.isfinite(value) else f"{value * scale:.{digits}f}"


def side_by_side(rows: Sequence[ToolFigures]) -> str:
    """A table with one row per tool run."""
    header = (
        f"{'tool':<34} {'req/s':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'TPOT p50':>9} {'E2E p50':>8} {'ok':>5} {'fail':>4} {'in tok':>6} {'out tok':>7} "
        f"{'srv CPU ms/req':>14}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.tool[:34]:<34} {row.request_throughput:>7.1f} {row.output_throughput:>7.0f} "
            f"{_cell(row.ttft_p50, 1e3, 1):>9} {_cell(row.ttft_p99, 1e3, 1):>9} "
            f"{_cell(row.tpot_p50, 1e3, 2):>9} {_cell(row.e2e_p50, 1e3, 0):>8} "
            f"{row.completed:>5} {row.failed:>4} {row.prompt_tokens_mean:>6.1f} "
            f"{row.output_tokens_mean:>7.1f} {_cell(row.server_cpu_ms_per_request, 1, 1):>14}"
        )
    lines.append("(latencies in ms; tokens per request are means from the servers' usage)")
    return "\n".join(lines)


def judge(ours: Sequence[ToolFigures], theirs: Sequence[ToolFigures]) -> Verdict:
    """Throughput within the run-to-run spread, and TTFT p50 not higher beyond that spread."""
    if not ours or not theirs:
        return not_judged("parity", Unjudged.NO_DATA, "no runs to compare")
    ours_rps = [r.request_throughput for r in ours]
    theirs_rps = [r.request_throughput for r in theirs]
    spread = max(
        max(ours_rps) - min(ours_rps),
        max(theirs_rps) - min(theirs_rps),
        0.1 * statistics.mean(theirs_rps),
    )
    rps_gap = statistics.mean(theirs_rps) - statistics.mean(ours_rps)
    ours_ttft = statistics.median(r.ttft_p50 for r in ours)
    theirs_ttft = statistics.median(r.ttft_p50 for r in theirs)
    ttft_spread = max(
        max(r.ttft_p50 for r in [*ours, *theirs]) - min(r.ttft_p50 for r in [*ours, *theirs]),
        0.1 * theirs_ttft,
    )
    problems = []
    if abs(rps_gap) > spread:
        problems.append(
            f"request throughput differs by {rps_gap:+.1f} req/s (theirs - ours), "
            f"beyond the spread {spread:.1f}"
        )
    if ours_ttft - theirs_ttft > ttft_spread:
        problems.append(
            f"TTFT p50 is higher here ({ours_ttft * 1e3:.1f} vs {theirs_ttft * 1e3:.1f} ms, "
            f"spread {ttft_spread * 1e3:.1f} ms)"
        )
    source = "the run-to-run spread of both tools (at least 10 %)"
    if problems:
        return judged(
            "parity",
            False,
            "; ".join(problems),
            measured=rps_gap,
            limit=spread,
            unit="req/s",
            source=source,
        )
    return judged(
        "parity",
        True,
        f"agree: throughput gap {rps_gap:+.1f} req/s within spread {spread:.1f}; "
        f"TTFT p50 {ours_ttft * 1e3:.1f} vs {theirs_ttft * 1e3:.1f} ms",
        measured=rps_gap,
        limit=spread,
        unit="req/s",
        source=source,
    )
