"""Optional dependencies: import one, or skip the test naming the extra that installs it."""

from __future__ import annotations

from types import ModuleType

import pytest

EXTRA_OF: dict[str, str] = {
    "vllm": "cpu",  # or gpu: both install the `vllm` import package
    "transformers": "cpu",
    "torch": "cpu",
    "docker": "docker",
    "locust": "load",
    "schemathesis": "schema",
    "jsonschema": "schema",
    "ray": "ray",
    "plotly": "report",
    "scipy": "stats",
    "datasets": "datasets",
}
"""The pytest-gpuinfer extra that brings each optional top-level module."""


def install_hint(module: str) -> str:
    """How to get ``module``: the extra that carries it, else the package itself."""
    extra = EXTRA_OF.get(module.split(".")[0])
    if extra is None:
        return f"pip install {module.split('.')[0]}"
    if extra == "cpu":
        return "pip install 'pytest-gpuinfer[cpu]' (or [gpu] on a GPU box)"
    return f"pip install 'pytest-gpuinfer[{extra}]'"


def require(module: str, why: str = "") -> ModuleType:
    """Import ``module``, or skip the test saying what is missing and how to install it."""
    reason = f"{module} is not installed{f' ({why})' if why else ''}: {install_hint(module)}"
    return pytest.importorskip(module, reason=reason)
