"""Installed but unused, the plugin stays out of the way of a project's ordinary pytest run.

It prints nothing, warns nothing, imports nothing beyond the standard library and pytest, and
touches no NVML, Docker, network, temp folder or signal handler until a run asks for it (one of
its options, or a test that uses a server or a GPU). Start-up cost is measured in
bench/bench_plugin_startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = (
    "numpy",
    "httpx",
    "psutil",
    "pynvml",
    "docker",
    "orjson",
    "uvloop",
    "httptools",
    "prometheus_client",
    "tokenizers",
    "safetensors",
    "yaml",
    "pytest_gpuinfer.targets",
    "pytest_gpuinfer.load",
    "pytest_gpuinfer.metrics",
    "pytest_gpuinfer.hardware",
    "pytest_gpuinfer.report",
)
"""Modules an unused plugin must not import (third-party, or our layers below the plugin)."""

UNRELATED_CONFTEST = f"""
import json, os, signal, sys

HEAVY = {HEAVY!r}

def pytest_sessionfinish(session):
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m in HEAVY
                    or any(m.startswith(h + ".") for h in HEAVY))
    handler = signal.getsignal(signal.SIGTERM)
    with open(os.environ["INERT_OUT"], "w") as out:
        json.dump({{"loaded": loaded, "sigterm_default": handler == signal.SIG_DFL,
                   "gpuinfer_plugin": session.config.pluginmanager.has_plugin("gpuinfer")}}, out)
"""


def test_the_plugin_layer_imports_nothing_heavy() -> None:
    """Importing the entry point and every fixture module loads only stdlib, pytest and plugin/."""
    code = textwrap.dedent(
        """
        import importlib, json, sys
        import pytest
        before = set(sys.modules)
        hooks = importlib.import_module("pytest_gpuinfer.plugin.hooks")
        for name in hooks.FIXTURE_MODULES:
            importlib.import_module(name)
        new = sorted(
            m for m in set(sys.modules) - before
            if m.split(".")[0] not in sys.stdlib_module_names
            and not m.startswith("pytest_gpuinfer.plugin")
            and m not in ("pytest_gpuinfer", "_cython_3_3_0", "cython_runtime")
        )
        print(json.dumps(new))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_an_unrelated_project_sees_nothing(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One ordinary test, the plugin installed: no output, no warning, nothing imported or set."""
    out = tmp_path_factory.mktemp("inert") / "seen.json"
    temp = tmp_path_factory.mktemp("tmpdir")
    pytester.makeconftest(UNRELATED_CONFTEST)
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    pytester.makefile(".ini", pytest="[pytest]\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INERT_OUT", str(out))
        patch.setenv("TMPDIR", str(temp))
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)
    lines = [line for line in result.outlines + result.errlines if not line.startswith("plugins:")]
    assert not [line for line in lines if "gpuinfer" in line.lower()], lines
    assert not [line for line in lines if "warning" in line.lower()], lines
    seen = json.loads(out.read_text())
    assert seen["gpuinfer_plugin"], "the plugin should be installed in this run"
    assert seen["loaded"] == []
    assert seen["sigterm_default"]
    assert not list(temp.glob("pytest-gpuinfer-*")), "no work folder for an unused plugin"


def test_a_run_that_uses_a_server_still_says_what_it_tests(pytester: pytest.Pytester) -> None:
    """Without any option of ours, a test that asks for the server gets the target header."""
    pytester.makepyfile(
        """
        def test_uses_the_settings(gpuinfer_settings):
            assert gpuinfer_settings.engine == "vllm"

        def test_would_use_it(inference_server):
            pass
        """
    )
    result = pytester.runpytest("--collect-only", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["collected 2 items", "gpuinfer *: target vllm*"])
