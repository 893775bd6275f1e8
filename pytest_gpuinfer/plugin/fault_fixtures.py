"""Faults between a test and the server: the ``fault`` marker and the fault proxy fixtures.

``@pytest.mark.fault("reset_mid_stream", p=0.05)`` (repeatable) names the faults a test runs
under; ``faulty_server`` is the server as seen through the fault proxy with those faults set, and
``load_runner`` in such a test sends its load through it. The proxy (its own process) starts once
per server and is stopped with it; after each test its counts go to the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_gpuinfer.plugin.state import RUN_STATE

if TYPE_CHECKING:
    from pytest_gpuinfer.faults import Fault, FaultProxy
    from pytest_gpuinfer.targets import InferenceServer


def faults_for(item: pytest.Item) -> tuple[Fault, ...]:
    """The faults a test's ``fault`` markers name (checked at collection by plugin.markers)."""
    from pytest_gpuinfer.faults import Fault

    return tuple(Fault.of(m.args[0], **m.kwargs) for m in item.iter_markers(name="fault"))


def _server_scope(fixture_name: str, config: pytest.Config) -> Any:
    """The proxy lives as long as the server it stands in front of."""
    state = config.stash.get(RUN_STATE, None)
    return state.settings.server_scope if state is not None else "session"


@pytest.fixture(scope=_server_scope)
def fault_proxy(inference_server: InferenceServer) -> Iterator[FaultProxy]:
    """A fault proxy process in front of the server (no faults until a test sets some)."""
    from pytest_gpuinfer.faults import FaultProxy, FaultProxyError

    try:
        proxy = FaultProxy.start(inference_server.base_url)
    except FaultProxyError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def faulty_server(
    request: pytest.FixtureRequest, inference_server: InferenceServer, fault_proxy: FaultProxy
) -> Iterator[InferenceServer]:
    """The server seen through the fault proxy, with this test's ``fault`` markers applied."""
    import dataclasses

    from pytest_gpuinfer.plugin import report_plugin

    faults = faults_for(request.node)
    fault_proxy.set(faults, seed=0)
    try:
        yield dataclasses.replace(inference_server, base_url=fault_proxy.base_url)
    finally:
        counts = fault_proxy.stats()
        fault_proxy.clear()
        described = [f.describe() for f in faults]
        report_plugin.record(
            request.node, "fault", {"faults": described, "fault_proxy": counts, "verdicts": []}
        )
