"""The batch suite: offline batch inference (vLLM's LLM, Ray Data), every test marked ``batch``.

These tests own their engines (a vLLM offline engine in a worker process, local Ray instances,
a local three-node Ray cluster): none of them needs the session's ``inference_server``. Every run
has a hard time limit; after each, no Ray or vLLM process and no ``/dev/shm`` file of the run may
remain (the ``batch_engines`` fixture fails the test otherwise). ``CI=true`` runs short sizes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
"""This suite's folder (tests/batch in a checkout, pytest_gpuinfer/suites/batch installed)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``batch``."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.batch)
