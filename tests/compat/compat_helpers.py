"""Suite glue shared by the compat tests: fixture scopes tied to the server's, the cold-start key.

The checks' logic lives in ``pytest_gpuinfer.compat`` (findings, probes, deviations, requests);
``pytest_gpuinfer.plugin.compat_outcomes`` turns its findings into pytest outcomes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

SCOPES = ("function", "class", "module", "package", "session")


def server_scope(fixture_name: str, config: pytest.Config) -> Any:
    """The scope of ``inference_server`` (--server-scope), for fixtures that hold on to it."""
    from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of

    return gpuinfer_settings_of(config).server_scope


def at_most(scope: str) -> Callable[[str, pytest.Config], Any]:
    """A dynamic scope: ``scope`` or the server's scope, whichever is narrower."""

    def pick(fixture_name: str, config: pytest.Config) -> Any:
        server = server_scope(fixture_name, config)
        return min(scope, server, key=SCOPES.index)

    return pick


COLD_START_KEY = pytest.StashKey[dict[str, float]]()
"""Where the cold-start test leaves its figures for the terminal summary line."""
