"""Package layout that pyproject.toml cannot express: the suites ship in the wheel.

The suites users run live where the project's layout puts them (tests/compat, tests/perf, ...)
and install as ``pytest_gpuinfer.suites.<name>``: one copy, mapped here. Everything else about the
package is in pyproject.toml. The repository's own plugin tests (tests/plugin) do not ship.
"""

import runpy
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
SUITES = runpy.run_path(str(HERE / "pytest_gpuinfer" / "suites" / "__init__.py"))["SUITES"]

setup(
    packages=[
        *find_packages(include=["pytest_gpuinfer", "pytest_gpuinfer.*"]),
        *(f"pytest_gpuinfer.suites.{name}" for name in SUITES),
    ],
    package_dir={f"pytest_gpuinfer.suites.{name}": f"tests/{name}" for name in SUITES},
    package_data={
        "pytest_gpuinfer.report": ["schema.json"],
        "pytest_gpuinfer.suites.memory": ["*.sh"],
    },
)
