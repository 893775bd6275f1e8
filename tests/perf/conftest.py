"""Every test in the perf suite carries the ``perf`` marker (select with ``pytest -m perf``)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
"""This suite's folder (tests/perf in a checkout, pytest_gpuinfer/suites/perf installed)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests collected from this folder as perf tests."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.perf)
