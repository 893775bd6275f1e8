"""Perf-suite fixtures: exact workloads, SLOs in force, CI sizes, extra servers, baselines.

* ``perf_sizes``: request counts and matrix/sweep sizes, short when ``CI=true`` (or scaled by
  ``--load-scale``).
* ``perf_workload``: prompts of exactly N target tokens (``/tokenize`` or the model's tokenizer)
  and whether ``ignore_eos`` holds, built once per server.
* ``perf_slos``: ``perf_slos("concurrency")`` gives the test's own SLOs (marker, ``--slo``, ini)
  or the defaults for the target, and makes ``load_runner`` judge by them.
* ``server_factory``: launches a fresh server of the run's engine with extra engine arguments or
  environment through the run's own lifecycle code; ``stop`` tears it down; all are stopped at
  the end of the test.
* ``perf_baseline``: with pytest-benchmark's ``--benchmark-save``/``--benchmark-autosave`` it
  stores a result per machine identity; with ``--benchmark-compare[=NUM]`` it compares and fails
  on a regression (tolerance from ``--benchmark-compare-fail=mean:N%``, default 10 %). Asking
  for a comparison with no stored baseline is an error; without ``--benchmark-compare`` the
  regression verdict reads NOT JUDGED (no baseline) with the run's figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer.plugin import report_plugin
from pytest_gpuinfer.plugin.ci import in_ci
from pytest_gpuinfer.plugin.load_fixture import slos_for
from pytest_gpuinfer.plugin.state import RUN_STATE

if TYPE_CHECKING:
    from pytest_gpuinfer.load import prompts
    from pytest_gpuinfer.load.runner import LoadResult
    from pytest_gpuinfer.perf import baselines
    from pytest_gpuinfer.perf.batches import BatchLimits
    from pytest_gpuinfer.perf.slos import SLOsInForce
    from pytest_gpuinfer.plugin.load_fixture import TestLoadRunner
    from pytest_gpuinfer.targets import InferenceServer

if TYPE_CHECKING:
    from pytest_gpuinfer.load.workloads import Synthetic


@dataclass(frozen=True)
class PerfSizes:
    """How big each perf test runs (short on CI)."""

    requests: int
    rate_requests: int
    matrix_concurrency: tuple[int, ...]
    matrix_lengths: tuple[tuple[int, int], ...]
    sweep_requests: int
    batches: int
    batch_requests: int
    parity_requests: int
    regression_requests: int
    """Requests of one regression-gate run: a p95 of 60 moved by half between runs a minute
    apart on shared CPUs; 200 hold it better."""
    ci: bool

    def scaled(self, count: int) -> int:
        """A request count, at least 20."""
        return max(20, count)


@pytest.fixture(scope="session")
def perf_sizes(pytestconfig: pytest.Config) -> PerfSizes:
    """Request counts for the perf suite: short on CI, fuller otherwise; ``--load-scale`` scales."""
    state = pytestconfig.stash[RUN_STATE]
    scale = state.settings.load_scale
    ci = in_ci()

    def n(full: int, short: int) -> int:
        return max(10, round((short if ci else full) * scale))

    return PerfSizes(
        requests=n(400, 100),
        rate_requests=n(200, 80),
        matrix_concurrency=(1, 8) if ci else (1, 4, 16, 64),
        matrix_lengths=((64, 16), (128, 32)) if ci else ((64, 16), (128, 32), (512, 64)),
        sweep_requests=n(160, 64),
        batches=3,
        batch_requests=n(400, 300),  # CI: about 5 s a batch; 2.5 s ones swung by 40 %
        parity_requests=n(400, 64),
        regression_requests=n(200, 200),
        ci=ci,
    )


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def engine_on_client_cpus(config: pytest.Config, server: InferenceServer) -> bool:
    """True when the engine computes on the CPUs the load client runs on: a real engine (not the
    simulator) on this machine's loopback address, and no GPU on the machine."""
    import urllib.parse

    host = urllib.parse.urlsplit(server.base_url).hostname or ""
    state = config.stash[RUN_STATE]
    return not server.is_simulator and host in LOOPBACK_HOSTS and not state.inventory.has_gpu


@pytest.fixture
def perf_batch_limits(
    pytestconfig: pytest.Config, inference_server: InferenceServer
) -> BatchLimits:
    """The batches' limits: those measured for an engine on the client's CPUs, else defaults."""
    from pytest_gpuinfer.perf.batches import BatchLimits

    if engine_on_client_cpus(pytestconfig, inference_server):
        return BatchLimits.engine_on_client_cpus()
    return BatchLimits()


@dataclass
class PerfWorkload:
    """Exact-length prompts for the server under test, and whether ignore_eos is honoured."""

    server: InferenceServer
    counter: prompts.TokenCounter | None
    ignore_eos: bool
    _cache: dict[tuple[int, int, bool, int], prompts.PromptSet] = field(default_factory=dict)
    _runs: int = 0

    def prompts(
        self, tokens: int, count: int = 64, *, varied: bool = True, seed: int = 0
    ) -> prompts.PromptSet:
        """``count`` prompts of exactly ``tokens`` target tokens (cached per seed)."""
        from pytest_gpuinfer.load import prompts

        key = (tokens, count, varied, seed)
        if key not in self._cache:
            self._cache[key] = prompts.build_prompts(
                self.counter, tokens, count=count, varied=varied, seed=seed
            )
        return self._cache[key]

    def extra_body(self) -> dict[str, Any] | None:
        """``{"ignore_eos": true}`` where the server honours it, else None."""
        return {"ignore_eos": True} if self.ignore_eos else None

    def synthetic(self, prompt_tokens: int, output_tokens: int) -> Synthetic:
        """Exact-length prompts asking for ``output_tokens``, with ``ignore_eos`` where honoured.

        Each call gets prompts with new openings (a new seed), so a run does not find the
        previous run's prompts in the engine's prefix cache.
        """
        from pytest_gpuinfer.load.workloads import Synthetic

        self._runs += 1
        return Synthetic(prompt_tokens, output_tokens, ignore_eos=self.ignore_eos, seed=self._runs)


_WORKLOADS: dict[str, PerfWorkload] = {}


@pytest.fixture
def perf_workload(inference_server: InferenceServer) -> PerfWorkload:
    """Exact-length prompts and output lengths for the session's server (built once per server)."""
    return workload_for(inference_server)


def workload_for(server: InferenceServer) -> PerfWorkload:
    """The (cached) workload helper of ``server``."""
    from pytest_gpuinfer.load import prompts

    key = f"{server.base_url}|{server.model}|{id(server)}"
    if key not in _WORKLOADS:
        counter = prompts.token_counter_for(
            server.base_url,
            server.model,
            model_dir=server.model_path,
            headers=server.auth_headers(),
        )
        ignore_eos = prompts.supports_ignore_eos(
            server.base_url, server.model, headers=server.auth_headers()
        )
        _WORKLOADS[key] = PerfWorkload(server, counter, ignore_eos)
    return _WORKLOADS[key]


@pytest.fixture
def perf_own_slos(request: pytest.FixtureRequest) -> tuple[Any, ...]:
    """The test's own SLOs (marker, --slo, ini), without starting the session's server."""
    return slos_for(request.node, request.config.stash[RUN_STATE].settings.slos)


@pytest.fixture
def perf_slos(
    request: pytest.FixtureRequest, inference_server: InferenceServer, load_runner: TestLoadRunner
) -> Callable[[str], SLOsInForce]:
    """``perf_slos(scenario)``: the SLOs in force; ``load_runner`` is set to judge by them."""
    from pytest_gpuinfer.perf.slos import slos_in_force

    state = request.config.stash[RUN_STATE]
    own = slos_for(request.node, state.settings.slos)

    def choose(scenario: str) -> SLOsInForce:
        chosen = slos_in_force(
            own,
            engine=inference_server.engine,
            model=inference_server.model,
            gpu_uuids=inference_server.gpu_uuids,
            scenario=scenario,
        )
        load_runner.slos = chosen.slos
        return chosen

    return choose


def machine_identity(
    config: pytest.Config, server: InferenceServer, configuration: str
) -> baselines.MachineIdentity:
    """The identity a baseline is stored under: GPUs, driver, engine, model, configuration."""
    from pytest_gpuinfer.perf import baselines

    state = config.stash[RUN_STATE]
    gpus = state.gpus_in_use
    engine_args = " ".join(state.settings.engine_args)
    return baselines.MachineIdentity(
        gpu_model=gpus[0].name if gpus else "cpu",
        gpu_count=len(gpus),
        driver=state.inventory.driver_version or "none",
        engine=server.engine,
        engine_version=server.engine_version or "unknown",
        model=server.model,
        configuration=f"{configuration} {engine_args}".strip(),
    )


@dataclass
class PerfBaseline:
    """Saves results as baselines and gates on regressions, per pytest-benchmark's options."""

    config: pytest.Config
    server: InferenceServer
    root: Path
    save_label: str | None
    compare_with: str | bool | None
    tolerance: float
    reports: list[baselines.RegressionReport] = field(default_factory=list)
    item: pytest.Item | None = None
    """The test whose comparisons go into the run's report."""

    def run_and_check(
        self,
        name: str,
        attempt: Callable[[int], LoadResult],
        configuration: str = "",
        attempts: int = 2,
    ) -> str:
        """``attempt(1)``, measured again (``attempt(2)``, a longer window) while the load
        engine's self-check flags the run, then :meth:`check` on the last: a client starved of
        CPU is neither compared nor stored when a retry can do better. Returns the notes.

        Example::

            perf_baseline.run_and_check(
                "latency c=4", lambda n: load_runner.run(ClosedLoop(4), work, Limits(60 * n))
            )
        """
        __tracebackhide__ = True
        notes = []
        result = attempt(1)
        for number in range(2, attempts + 1):
            if not result.client_bound:
                break
            notes.append(
                f"attempt {number - 1} not used: the self-check flagged it "
                f"({'; '.join(result.self_check.reasons)}); measuring again with attempt {number}"
            )
            result = attempt(number)
        return self.check(name, result, configuration, notes)

    def check(
        self,
        name: str,
        result: LoadResult,
        configuration: str = "",
        earlier_notes: Sequence[str] = (),
    ) -> str:
        """Save and/or compare ``result`` under ``name``; fail on a regression; return a note.

        ``--benchmark-compare`` with no stored baseline for this identity and name fails the
        test (a comparison asked for and not made is not a pass); without it the regression
        verdict is recorded as NOT JUDGED. ``earlier_notes`` (attempts not used) lead the notes
        and a failure's message.
        """
        from pytest_gpuinfer.perf import baselines
        from pytest_gpuinfer.report.payloads import no_baseline_payload

        __tracebackhide__ = True
        from pytest_gpuinfer.plugin.verdicts import enforce

        identity = machine_identity(self.config, self.server, configuration)
        where = baselines.storage_dir(self.root, identity)
        notes: list[str] = list(earlier_notes)
        if self.compare_with is not None:
            path = baselines.find(self.root, identity, self.compare_with)
            entry = baselines.load_entry(path, name) if path is not None else None
            if path is None or entry is None:
                found = f"{path} has no entry {name!r}" if path is not None else f"none in {where}"
                asked = "" if self.compare_with is True else f"={self.compare_with}"
                pytest.fail(
                    f"--benchmark-compare{asked}: no stored baseline to compare "
                    f"{name!r} with ({found}); store one first with --benchmark-save or "
                    "--benchmark-autosave on this machine identity",
                    pytrace=False,
                )
            report = baselines.compare(
                name, result, entry, baseline_path=str(path), tolerance=self.tolerance
            )
            self.reports.append(report)
            notes.append(report.table())
            if self.item is not None:
                report_plugin.record(self.item, "regression", report)
            if report.regressed:
                pytest.fail("\n".join(notes), pytrace=False)
            enforce(self.config, report.verdicts())
        else:
            why = (
                "not compared: no --benchmark-compare; the latest stored baseline for this "
                f"machine identity would be in {where}"
            )
            verdict = baselines.no_baseline(name, why, result)
            notes.append(f"{verdict.label}  {verdict.name}: {verdict.message}")
            if self.item is not None:
                report_plugin.record(self.item, "regression", no_baseline_payload(verdict))
        if self.save_label is not None:
            saved = baselines.save(
                self.root, identity, [baselines.baseline_entry(name, result)], self.save_label
            )
            notes.append(f"baseline saved: {saved}")
            if result.client_bound:
                notes.append(
                    "  the self-check flagged this run (the client, not the server, set part of "
                    "its figures): comparisons with it read NOT JUDGED; store one from a run the "
                    "self-check passes"
                )
        if self.compare_with is None:
            enforce(self.config, [verdict])
        return "\n".join(notes)


def _tolerance(config: pytest.Config) -> float:
    """The first percentage in --benchmark-compare-fail (e.g. mean:5%), else 10 %."""
    checks = config.getoption("benchmark_compare_fail", None) or []
    for check in checks:
        threshold = getattr(check, "threshold", None)
        if type(check).__name__ == "PercentageRegressionCheck" and threshold is not None:
            return float(threshold) / 100.0
    return 0.10


@pytest.fixture
def perf_baseline(
    request: pytest.FixtureRequest, pytestconfig: pytest.Config, inference_server: InferenceServer
) -> PerfBaseline:
    """Baseline storage and regression gate driven by pytest-benchmark's options."""
    from pytest_gpuinfer.perf import baselines

    storage = pytestconfig.getoption("benchmark_storage", None) or "file://./.benchmarks"
    save = pytestconfig.getoption("benchmark_save", None) or pytestconfig.getoption(
        "benchmark_autosave", None
    )
    compare = pytestconfig.getoption("benchmark_compare", None)
    return PerfBaseline(
        config=pytestconfig,
        server=inference_server,
        root=baselines.storage_root(storage),
        save_label=str(save) if save else None,
        compare_with=compare if compare not in (None, [], False) else None,
        tolerance=_tolerance(pytestconfig),
        item=request.node,
    )
