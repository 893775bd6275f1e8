"""Every test in the perf suite carries the ``perf`` marker (select with ``pytest -m perf``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests collected from this folder as perf tests."""
    for item in items:
        if "tests/perf/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.perf)
