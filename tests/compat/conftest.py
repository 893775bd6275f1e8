"""Every test in the compat suite carries the ``compat`` marker."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests collected from this folder as compat tests."""
    for item in items:
        if "tests/compat/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.compat)
