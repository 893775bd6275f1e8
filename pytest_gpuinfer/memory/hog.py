"""A helper process that allocates memory per batch, and keeps it (leak) or frees it (steady).

It is the known truth for leak checks: a leaking hog must fail them and a steady one must pass.
On ``--device cpu`` it allocates touched host memory (RSS); on ``--device cuda`` it allocates
GPU memory through PyTorch (seen by NVML), emptying PyTorch's cache on free so NVML sees it go.

Protocol on stdin/stdout, one line each: ``batch`` -> allocate ``--mb`` MB (kept in leak mode,
freed in steady mode) and answer ``done <n>``; ``exit`` -> quit.

    with MemoryHog(mb=20, leak=True) as hog:
        tracker = MemoryTracker(ProcessTreeRSS(hog.pid)).start()
        for _ in range(5):
            hog.batch()
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

MB = 1_000_000


def _allocate(mb: int, device: str) -> Any:
    """``mb`` MB of memory whose pages are really in use, on the host or the GPU."""
    if device == "cpu":
        return bytearray(b"\x01") * (mb * MB)
    import torch

    block = torch.ones(mb * MB, dtype=torch.uint8, device=device)
    torch.cuda.synchronize()
    return block


def _release(device: str) -> None:
    """Give freed memory back (PyTorch keeps freed GPU blocks cached unless told)."""
    if device != "cpu":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def main(argv: Sequence[str] | None = None) -> int:
    """The helper process's loop: allocate per ``batch`` line, keep or free, answer ``done``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=20, help="MB allocated per batch")
    parser.add_argument("--mode", choices=("leak", "steady"), default="steady")
    parser.add_argument("--device", default="cpu", help="cpu, or a CUDA device such as cuda:0")
    args = parser.parse_args(argv)
    kept: list[Any] = []
    if args.device != "cpu":
        _release(args.device)  # initialise the CUDA context before the first batch
    print("ready", flush=True)
    count = 0
    for line in sys.stdin:
        command = line.strip()
        if command == "exit":
            break
        if command != "batch":
            print(f"error unknown command {command!r}", flush=True)
            continue
        block = _allocate(args.mb, args.device)
        if args.mode == "leak":
            kept.append(block)
        del block
        _release(args.device)
        count += 1
        print(f"done {count}", flush=True)
    return 0


def _env_finding_this_package() -> dict[str, str]:
    """This environment with PYTHONPATH leading to this package (when it is not installed)."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class MemoryHog:
    """Drives a hog process from the test: start, run batches, stop."""

    def __init__(
        self, *, mb: int, leak: bool, device: str = "cpu", python: str = sys.executable
    ) -> None:
        self.proc = subprocess.Popen(
            [
                python,
                "-m",
                "pytest_gpuinfer.memory.hog",
                "--mb",
                str(mb),
                "--mode",
                "leak" if leak else "steady",
                "--device",
                device,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env_finding_this_package(),
        )
        self._expect("ready")

    @property
    def pid(self) -> int:
        """The hog's process id (what a tracker watches)."""
        return self.proc.pid

    def _expect(self, prefix: str) -> str:
        """Read one line and check it starts with ``prefix``."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            code = self.proc.poll()
            raise RuntimeError(f"memory hog answered {line!r} (exit code {code}), not {prefix!r}")
        return line

    def batch(self) -> None:
        """One batch: allocate (and keep or free); returns when the hog has done it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("batch\n")
        self.proc.stdin.flush()
        self._expect("done")

    def close(self) -> None:
        """Ask the hog to exit; kill it if it does not within 10 s."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> MemoryHog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":
    raise SystemExit(main())
