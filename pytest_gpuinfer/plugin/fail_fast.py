"""Fail fast on an unresponsive server: the first check that times out decides for the session.

When a request to the server times out, one minimal completion is sent to it (waiting at most
``--first-token-timeout``; see ``targets.responsiveness``). If that gets no answer either, the
server is judged unresponsive: the verdict, with its evidence, is attached to the report of the
test that timed out, and every later test that needs the server fails at once with it instead of
waiting out its own timeout. Requests through the plugin's clients (``http_client``,
``openai_client``, the compat probes) are judged where they time out; a timeout anywhere else in
a test that uses the server is judged here, after the test.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import TYPE_CHECKING

import pytest

from pytest_gpuinfer.plugin.state import RUN_STATE

if TYPE_CHECKING:
    from pytest_gpuinfer.targets.base import InferenceServer
    from pytest_gpuinfer.targets.responsiveness import Unresponsive

UNRESPONSIVE = pytest.StashKey[str]()
"""The unresponsive-server story, once a probe has confirmed it."""

_TIMEOUT_WORDS = re.compile(r"timed out|timeout", re.IGNORECASE)


def _chain(error: BaseException | None) -> list[BaseException]:
    """An exception and those it was raised from or during, outermost first."""
    chain: list[BaseException] = []
    while error is not None and all(error is not seen for seen in chain):
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def looks_like_timeout(error: BaseException | None) -> bool:
    """True when an exception, or one it was raised from, is a timeout (by type or message)."""
    for link in _chain(error):
        if any("Timeout" in kind.__name__ for kind in type(link).__mro__):
            return True
        if _TIMEOUT_WORDS.search(str(link)):
            return True
    return False


def _judged(error: BaseException | None) -> Unresponsive | None:
    """The verdict carried by a ServerUnresponsive in the exception chain, if any."""
    for link in _chain(error):
        verdict = getattr(link, "verdict", None)
        if verdict is not None and type(link).__name__ == "ServerUnresponsive":
            return verdict
    return None


def _uses_server(item: pytest.Item) -> bool:
    """True when the test needs the inference server (directly or through a fixture)."""
    return "inference_server" in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test that needs the server at once when the server was judged unresponsive."""
    story = item.config.stash.get(UNRESPONSIVE, None)
    if story is not None and _uses_server(item):
        pytest.fail(story, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """After a timeout in a test that used the server, judge the server; attach the verdict."""
    report = yield
    config = item.config
    if (
        not report.failed
        or call.when == "teardown"
        or UNRESPONSIVE in config.stash
        or not _uses_server(item)
        or call.excinfo is None
    ):
        return report
    verdict = _judged(call.excinfo.value)
    servers = config.stash[RUN_STATE].servers_seen
    if verdict is None and servers and looks_like_timeout(call.excinfo.value):
        from pytest_gpuinfer.targets.responsiveness import watch_for

        verdict = watch_for(servers[-1]).after_timeout(item.nodeid)
    if verdict is not None:
        decided = f"Decided by {item.nodeid}; tests that need the server now fail at once."
        report.sections.append(("gpuinfer: server unresponsive", f"{verdict.story()}. {decided}"))
        # Later tests say it in one line; the evidence is in the deciding test's report.
        config.stash[UNRESPONSIVE] = f"{verdict.summary()}; judged after {item.nodeid} timed out"
    return report


def watch_server(server: InferenceServer, config: pytest.Config) -> None:
    """Start watching a server just started or attached, with the run's --first-token-timeout."""
    from pytest_gpuinfer.targets.responsiveness import start_watch

    start_watch(server, config.stash[RUN_STATE].settings.first_token_timeout_s)
