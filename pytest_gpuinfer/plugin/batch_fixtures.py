"""Fixtures of the batch suite: batch engines that tests own, exact-length rows, result reports.

- ``batch_settings`` (session): the model, ``--ray-address``, the GPUs in use, whether this is a
  CI run (``CI=true``: short sizes), where logs and reports go.
- ``batch_rows`` (session): ``batch_rows(count, prompt_tokens)``, rows of exact token lengths of
  the model's own tokenizer (cached).
- ``batch_engines`` (function): ``batch_engines.start(mode, **spec)`` starts a batch engine
  (``offline``, ``ray``, ``ray-llm``) that is closed, swept and checked for leftovers at teardown.
- ``offline_batch_engine`` (session): one vLLM offline engine shared by the matrix, limit and
  projection tests, so its model loads once; its KV cache is capped (``OFFLINE_KV_BLOCKS``) so
  the batch-size limit is reached in seconds.
- ``batch_report`` (function): ``batch_report(name, result, kind=...)`` writes the result as
  JSON (under ``--gpuinfer-report``/batch) and as JUnit properties, prints it in the terminal
  summary, and hands it to the run's report as a result of that kind (``batch`` by default;
  ``matrix`` for a ranking, ``projection`` for an SLA window) with the verdicts it carries.

These tests own their engines: none of them needs the session's ``inference_server``. Without
Ray or vLLM installed they skip, naming what is missing.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer.plugin.ci import in_ci
from pytest_gpuinfer.plugin.state import RUN_STATE

if TYPE_CHECKING:
    from pytest_gpuinfer.batch.engines import BatchEngine, EngineSpec
    from pytest_gpuinfer.batch.results import InputRow, Leftovers

_REPORT_LINES = pytest.StashKey[list[str]]()

OFFLINE_KV_BLOCKS = 64
"""KV blocks of the shared offline engine (8,192 tokens on CPU, where a block holds 128), so the
batch limits are reached in seconds, as the memory suite caps its small-KV server."""
OFFLINE_ENGINE_KWARGS: dict[str, Any] = {
    "num_gpu_blocks_override": OFFLINE_KV_BLOCKS,
    "disable_log_stats": False,  # the engine's preemption counter
}


def require_modules(*modules: str) -> None:
    """Skip the test unless every module is importable, naming the missing ones."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        hint = {
            "ray": "pip install 'ray[data]' (scripts/setup.d/40-ray.sh; never ray[llm])",
            "vllm": "pip install -e '.[cpu]' (or .[gpu])",
        }
        pytest.skip("needs " + ", ".join(f"{m} ({hint.get(m, 'not installed')})" for m in missing))


@dataclass(frozen=True)
class BatchSettings:
    """What the batch suite runs on and how big."""

    model: str
    ray_address: str | None
    gpu_uuids: tuple[str, ...]
    ci: bool
    log_dir: Path
    report_dir: Path | None

    def spec(self, mode: str, **overrides: Any) -> EngineSpec:
        """An engine spec on this run's model, GPUs and (for Ray modes) cluster."""
        from pytest_gpuinfer.batch.engines import EngineSpec

        spec = EngineSpec(
            mode=mode,
            model=self.model,
            ray_address=self.ray_address if mode != "offline" else None,
            gpu_uuids=self.gpu_uuids,
        )
        return replace(spec, **overrides)

    def size(self, ci: int, full: int) -> int:
        """``ci`` in a CI run, else ``full``."""
        return ci if self.ci else full


@pytest.fixture(scope="session")
def batch_settings(pytestconfig: pytest.Config) -> BatchSettings:
    """The batch suite's settings for this run."""
    from pytest_gpuinfer.models import builtin

    state = pytestconfig.stash[RUN_STATE]
    settings = state.settings
    known = builtin.resolve(settings.model)
    model = str(known.ensure()) if known else str(settings.model)
    return BatchSettings(
        model=model,
        ray_address=settings.ray_address,
        gpu_uuids=tuple(g.uuid for g in state.gpus_in_use),
        ci=in_ci(),
        log_dir=state.work_dir / "batch",
        report_dir=settings.report_dir,
    )


@pytest.fixture(scope="session")
def batch_rows(batch_settings: BatchSettings) -> Callable[[int, int], list[InputRow]]:
    """``batch_rows(count, prompt_tokens)``: exact-length rows of the model's tokenizer."""
    cache: dict[tuple[int, int], list[InputRow]] = {}

    def rows(count: int, prompt_tokens: int) -> list[InputRow]:
        from pytest_gpuinfer.batch.engines import make_rows

        key = (count, prompt_tokens)
        if key not in cache:
            cache[key] = make_rows(batch_settings.model, count, prompt_tokens)
        return cache[key]

    return rows


@dataclass
class BatchEngines:
    """Starts batch engines for one test; closes and sweeps them at teardown."""

    settings: BatchSettings
    started: list[BatchEngine] = field(default_factory=list)

    def start(
        self, mode: str, *, memory_roots: tuple[int, ...] = (), **overrides: Any
    ) -> BatchEngine:
        """Start an engine (skips without Ray or vLLM)."""
        from pytest_gpuinfer.batch.engines import BatchEngine

        require_modules("vllm", *(("ray",) if mode != "offline" else ()))
        engine = BatchEngine(
            self.settings.spec(mode, **overrides),
            log_dir=self.settings.log_dir,
            memory_roots=memory_roots,
        )
        self.started.append(engine)
        return engine.start()

    def close_all(self) -> list[Leftovers]:
        """Close every engine; what each left behind (if anything)."""
        return [engine.close() for engine in self.started]


@pytest.fixture
def batch_engines(batch_settings: BatchSettings) -> Iterator[BatchEngines]:
    """Batch engines owned by the test; any leftover process or shm file fails the teardown."""
    engines = BatchEngines(batch_settings)
    yield engines
    dirty = [left for left in engines.close_all() if not left.clean]
    if dirty:
        pytest.fail(
            "batch engines left things behind: " + "; ".join(d.describe() for d in dirty),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def offline_batch_engine(batch_settings: BatchSettings) -> Iterator[BatchEngine]:
    """One vLLM offline engine for the whole session (the model loads once)."""
    from pytest_gpuinfer.batch.engines import BatchEngine

    require_modules("vllm")
    spec = batch_settings.spec("offline", engine_kwargs=dict(OFFLINE_ENGINE_KWARGS))
    engine = BatchEngine(spec, log_dir=batch_settings.log_dir)
    try:
        engine.start()
    except Exception as exc:
        engine.close()
        pytest.fail(f"the offline batch engine did not start: {exc}", pytrace=False)
    yield engine
    left = engine.close()
    if not left.clean:
        raise RuntimeError(f"the offline batch engine left things behind: {left.describe()}")


def _file_name(nodeid: str) -> str:
    """A node id as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")


class BatchReport:
    """Writes batch results for people (terminal summary) and machines (JSON, JUnit)."""

    def __init__(self, item: pytest.Item, settings: BatchSettings, lines: list[str]) -> None:
        self.item = item
        self.settings = settings
        self.lines = lines
        self.written: list[Path] = []

    def __call__(
        self, name: str, result: Any, text: str | None = None, kind: str = "batch"
    ) -> Path | None:
        """Record ``result`` (anything with ``to_dict()``) under ``name``, and in the run's
        report as a result of ``kind``."""
        from pytest_gpuinfer.plugin import report_plugin

        report_plugin.record(self.item, kind, result)
        document: dict[str, Any] = result.to_dict()
        document["test"] = self.item.nodeid
        headline = text or (result.describe() if hasattr(result, "describe") else "")
        self.lines.append(f"{self.item.nodeid} [{name}]\n{headline}")
        for key in ("rows_per_s", "output_tokens_per_s", "wall_s", "first_result_s"):
            if key in document:
                self.item.user_properties.append((f"batch_{name}_{key}", document[key]))
        if self.settings.report_dir is None:
            return None
        path = self.settings.report_dir / "batch" / f"{_file_name(self.item.nodeid)}-{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1, default=str))
        self.written.append(path)
        return path


@pytest.fixture
def batch_report(request: pytest.FixtureRequest, batch_settings: BatchSettings) -> BatchReport:
    """``batch_report(name, result)``: JSON, JUnit properties and the terminal summary."""
    lines = request.config.stash.setdefault(_REPORT_LINES, [])
    return BatchReport(request.node, batch_settings, lines)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the batch results tests recorded."""
    lines = config.stash.get(_REPORT_LINES, [])
    if not lines:
        return
    terminalreporter.write_sep("-", "batch inference")
    for block in lines:
        terminalreporter.write_line(block)
