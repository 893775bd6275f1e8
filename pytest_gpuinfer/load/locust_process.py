"""Run locust as its own process(es), bounded in time, and read its CSV statistics back.

Locust patches the standard library with gevent when imported, so it never runs inside pytest or
the load engine's process: :func:`run_locust` starts ``python -m locust`` headless (standalone,
or one master plus N local workers on a free loopback port), waits at most ``run_time_s`` plus a
grace period, stops every process group it started, and parses ``<prefix>_stats.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_GRACE_S = 30.0
"""Time past ``run_time_s`` for start-up (gevent imports, workers joining) and shutdown."""


@dataclass(frozen=True)
class LocustRow:
    """One line of locust's ``_stats.csv``: a request type and name with its figures."""

    type: str
    name: str
    requests: int
    failures: int
    median_ms: float | None
    average_ms: float | None
    requests_per_s: float | None
    percentiles: dict[str, float | None]
    """Keyed like the CSV columns: '50%', '90%', '95%', '99%', '100%' ..."""


@dataclass
class LocustRun:
    """What a locust run left: exit status, its CSV rows, failures and log tails."""

    command: list[str]
    returncode: int | None
    rows: list[LocustRow]
    failures_csv: list[dict[str, str]]
    out_dir: Path
    logs: dict[str, str] = field(default_factory=dict)
    timed_out: bool = False

    def row(self, type_: str, name: str | None = None) -> LocustRow | None:
        """The first row of a request type (and name, when given)."""
        for row in self.rows:
            if row.type == type_ and (name is None or row.name == name):
                return row
        return None

    @property
    def aggregated(self) -> LocustRow | None:
        """The 'Aggregated' row (all entries together)."""
        for row in self.rows:
            if row.name == "Aggregated":
                return row
        return None

    def user_counts(self) -> list[int]:
        """Users running at each of locust's history samples (about one a second), in order."""
        path = self.out_dir / "locust_stats_history.csv"
        if not path.exists():
            return []
        with path.open(newline="") as file:
            return [
                int(record["User Count"])
                for record in csv.DictReader(file)
                if record.get("Name") == "Aggregated" and record.get("User Count")
            ]

    @property
    def total_failures(self) -> int:
        """Failures over every entry."""
        return sum(row.failures for row in self.rows if row.name != "Aggregated")

    def headline(self) -> str:
        """One line: requests, failures and TTFT/ITL/E2E p50/p95."""
        parts = []
        for label, type_ in (("E2E", "POST"), ("TTFT", "TTFT"), ("ITL", "ITL")):
            row = self.row(type_)
            if row is not None:
                p50, p95 = row.percentiles.get("50%"), row.percentiles.get("95%")
                parts.append(f"{label} p50/p95 {_num(p50)}/{_num(p95)} ms (n={row.requests})")
        post = self.row("POST")
        rate = "-" if post is None or post.requests_per_s is None else f"{post.requests_per_s:.1f}"
        return (
            f"locust exit {self.returncode}: {post.requests if post else 0} requests, "
            f"{self.total_failures} failures, {rate} req/s; " + "; ".join(parts)
        )

    def text(self) -> str:
        """Headline, every CSV row, failures and log tails (for the test report)."""
        lines = [self.headline(), "command: " + " ".join(self.command)]
        for row in self.rows:
            lines.append(
                f"  {row.type:<5} {row.name:<40} n={row.requests} fail={row.failures} "
                f"p50={_num(row.percentiles.get('50%'))} p95={_num(row.percentiles.get('95%'))} "
                f"p99={_num(row.percentiles.get('99%'))} ms"
            )
        for failure in self.failures_csv[:10]:
            lines.append(f"  failure: {failure}")
        for name, tail in self.logs.items():
            lines.append(f"--- {name} log (last lines) ---\n{tail}")
        return "\n".join(lines)


def _num(value: float | None) -> str:
    """A figure or '-'."""
    return "-" if value is None else f"{value:g}"


def _float(text: str | None) -> float | None:
    """A CSV number ('N/A' and blanks are None)."""
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def read_stats_csv(path: Path) -> list[LocustRow]:
    """Parse locust's ``_stats.csv``."""
    rows = []
    with path.open(newline="") as file:
        for record in csv.DictReader(file):
            percentiles = {key: _float(value) for key, value in record.items() if key.endswith("%")}
            rows.append(
                LocustRow(
                    type=record.get("Type", ""),
                    name=record.get("Name", ""),
                    requests=int(record.get("Request Count") or 0),
                    failures=int(record.get("Failure Count") or 0),
                    median_ms=_float(record.get("Median Response Time")),
                    average_ms=_float(record.get("Average Response Time")),
                    requests_per_s=_float(record.get("Requests/s")),
                    percentiles=percentiles,
                )
            )
    return rows


def _free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file ('' when missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_group(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    """SIGTERM a process's group, then SIGKILL it if it has not gone within ``timeout_s``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout_s)


def run_locust(
    locustfile: str | Path,
    host: str,
    *,
    out_dir: Path,
    run_time_s: float,
    users: int = 4,
    spawn_rate: float = 4.0,
    workers: int = 0,
    shape: str | None = None,
    env: Mapping[str, str] | None = None,
    grace_s: float = _GRACE_S,
) -> LocustRun:
    """Run locust headless against ``host`` for at most ``run_time_s`` (+ ``grace_s``).

    ``workers`` = 0 runs one standalone process; N > 0 runs a master (which waits for all N)
    and N workers, all on loopback. ``shape`` selects the locustfile's shape through
    ``GPUINFER_SHAPE``. Every process is started in its own session and its group stopped at the
    end, whatever happened.
    """
    if not host.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"locust runs target loopback only, not {host!r}")
    if run_time_s <= 0 or workers < 0:
        raise ValueError("run_time_s must be > 0 and workers >= 0")
    locustfile = Path(locustfile)
    if not locustfile.is_file():
        raise ValueError(f"no locustfile at {locustfile}")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "locust"
    child_env = {**os.environ, **(env or {})}
    if shape is not None:
        child_env["GPUINFER_SHAPE"] = shape
    base = [sys.executable, "-m", "locust", "-f", str(locustfile)]
    main = [
        *base,
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "--run-time",
        f"{max(1, math.ceil(run_time_s))}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(prefix),
        "--only-summary",
    ]
    port = None
    if workers:
        port = _free_port()
        main += [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            str(workers),
            "--expect-workers-max-wait",
            str(int(grace_s)),
        ]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    log_paths: dict[str, Path] = {}

    def start(name: str, command: list[str]) -> None:
        log_paths[name] = out_dir / f"{name}.log"
        with log_paths[name].open("wb") as log:
            processes[name] = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env,
                start_new_session=True,
            )

    timed_out = False
    try:
        start("master" if workers else "locust", main)
        for index in range(workers):
            start(
                f"worker{index + 1}",
                [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            )
        leader = processes["master" if workers else "locust"]
        try:
            leader.wait(timeout=run_time_s + grace_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        deadline = time.monotonic() + 10
        for name, process in processes.items():
            if name.startswith("worker"):  # workers quit when the master does
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for process in processes.values():
            _stop_group(process)
    stats_path = Path(f"{prefix}_stats.csv")
    failures_path = Path(f"{prefix}_failures.csv")
    rows = read_stats_csv(stats_path) if stats_path.exists() else []
    failures: list[dict[str, str]] = []
    if failures_path.exists():
        with failures_path.open(newline="") as file:
            failures = list(csv.DictReader(file))
    leader_name = "master" if workers else "locust"
    return LocustRun(
        command=main,
        returncode=processes[leader_name].returncode,
        rows=rows,
        failures_csv=failures,
        out_dir=out_dir,
        logs={name: _tail(path) for name, path in log_paths.items()},
        timed_out=timed_out,
    )
