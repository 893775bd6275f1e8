"""Server-argument sweep: restart the target per configuration, measure each, rank them.

Each configuration's server is launched through the run's own lifecycle code (``launch``) and
stopped (``stop``) before the next one starts, also when measuring failed. A configuration that
fails to start is a row with the start failure's first lines, not an aborted sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pytest_gpuinfer.load.runner import LoadResult
from pytest_gpuinfer.metrics import slo
from pytest_gpuinfer.perf.ranking import Candidate, Objective, Ranking, rank

ServerT = TypeVar("ServerT")


@dataclass(frozen=True)
class ServerConfig:
    """Engine arguments and environment of one sweep point."""

    engine_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    name: str | None = None

    @property
    def label(self) -> str:
        """The name, else the arguments and environment in one line."""
        if self.name:
            return self.name
        parts = [*self.engine_args, *(f"{k}={v}" for k, v in self.env.items())]
        return " ".join(parts) or "(defaults)"


def run_sweep(
    configs: Sequence[ServerConfig],
    launch: Callable[[ServerConfig], ServerT],
    stop: Callable[[ServerT], None],
    measure: Callable[[ServerT], LoadResult],
    slos: Sequence[slo.SLO] | Callable[[], Sequence[slo.SLO]],
    objective: str | Objective = "throughput",
    *,
    describe: Callable[[ServerT], Mapping[str, Any]] | None = None,
    progress: Callable[[str], object] | None = None,
) -> Ranking:
    """Launch, measure and stop each configuration in turn; rank the ones that ran.

    ``slos`` may be a callable, asked after the runs (when the SLOs depend on the servers).
    ``progress`` gets a line as each configuration starts.
    """
    candidates: list[Candidate] = []
    for number, config in enumerate(configs, start=1):
        if progress is not None:
            progress(f"configuration {number}/{len(configs)}: {config.label}")
        cand = Candidate(
            config.label, {"engine_args": list(config.engine_args), "env": dict(config.env)}
        )
        started = time.monotonic()
        try:
            server = launch(config)
        except Exception as exc:  # a configuration that cannot start is a row with its reason
            cand.error = "failed to start: " + _first_lines(str(exc) or type(exc).__name__)
            candidates.append(cand)
            continue
        cand.extra["start_s"] = round(time.monotonic() - started, 1)
        try:
            if describe is not None:
                cand.extra.update(describe(server))
            cand.result = measure(server)
        except Exception as exc:
            cand.error = f"measuring failed: {type(exc).__name__}: {_first_lines(str(exc))}"
        finally:
            stop(server)
        candidates.append(cand)
    return rank(candidates, slos() if callable(slos) else slos, objective)


def _first_lines(text: str, lines: int = 2) -> str:
    """The first lines of a long message, joined."""
    return " | ".join(line.strip() for line in text.strip().splitlines()[:lines])
