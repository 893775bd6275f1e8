"""Every test in the load suite carries the ``load`` marker (select with ``pytest -m load``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests collected from this folder as load tests."""
    for item in items:
        if "tests/load/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.load)
