"""Progress lines for long runs (load shapes, boundary searches, sweeps) that stay quiet when
the output is not a terminal (CI logs, pipes, xdist workers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class ProgressLine:
    """Writes at most one progress line per ``min_interval_s`` to a terminal, nothing elsewhere.

    ``update("load 120/400 done")`` for any long loop; ``load(progress)`` is a ready-made
    ``LoadRunner`` progress callback. Safe to call from several threads.
    """

    def __init__(
        self,
        write_line: Callable[[str], None],
        *,
        enabled: bool,
        label: str = "",
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write_line = write_line
        self.enabled = enabled
        self.label = label
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()
        self.written = 0

    def update(self, text: str, *, force: bool = False) -> bool:
        """Show ``text`` unless disabled or the last line was shown too recently."""
        if not self.enabled:
            return False
        with self._lock:
            now = self._clock()
            if not force and self._last is not None and now - self._last < self.min_interval_s:
                return False
            self._last = now
            prefix = f"{self.label}: " if self.label else ""
            self._write_line(f"gpuinfer progress {prefix}{text}")
            self.written += 1
            return True

    def step(self, what: str, done: int, total: int | None = None) -> bool:
        """``what 3/10`` (a boundary probe, a sweep configuration, a matrix cell)."""
        return self.update(f"{what} {done}" + ("" if total is None else f"/{total}"))

    def load(self, progress: Any) -> None:
        """A ``LoadRunner`` progress callback: done/planned, failed, elapsed seconds."""
        planned = "" if progress.planned is None else f"/{progress.planned}"
        self.update(
            f"{progress.done}{planned} requests done, {progress.failed} failed, "
            f"{progress.elapsed_s:.0f} s"
        )
