"""Compat findings become pytest outcomes here, and only here.

``pytest_gpuinfer.compat`` returns findings (ok, a documented deviation, an absent capability,
a failure with the response, figures not judged) and raises ``Unmet`` when a helper cannot go
on. This module turns them into pass, xfail, skip or fail: a test calls :func:`judge` on a
finding or :func:`require` on a probed feature, and the hook below turns an ``Unmet`` raised
anywhere in a test's call into the outcome its finding asks for.

Inert plugin module: the standard library and pytest at module level; the compat package only
under TYPE_CHECKING or inside functions.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from pytest_gpuinfer.compat.findings import Feature, Finding

NOT_JUDGED_PREFIX = "NOT JUDGED"


def conclude(finding: Finding, config: pytest.Config | None = None) -> NoReturn:
    """End the test as ``finding`` says (never returns): skip, xfail or fail. NOT JUDGED is a
    skip saying so, never a pass, and a failure when the run requires judgement
    (``--gpuinfer-require-judgement``, read from ``config``)."""
    from pytest_gpuinfer.compat.findings import Outcome
    from pytest_gpuinfer.plugin.verdicts import judgement_required

    if finding.outcome is Outcome.ABSENT:
        pytest.skip(finding.message())
    if finding.outcome is Outcome.DEVIATION:
        pytest.xfail(finding.message())
    if finding.outcome is Outcome.NOT_JUDGED:
        if config is not None and judgement_required(config):
            pytest.fail(
                "judgement required (--gpuinfer-require-judgement), but "
                f"{NOT_JUDGED_PREFIX}: {finding.message()}",
                pytrace=False,
            )
        pytest.skip(f"{NOT_JUDGED_PREFIX}: {finding.message()}")
    pytest.fail(finding.message(), pytrace=False)


def judge(finding: Finding | None, config: pytest.Config | None = None) -> None:
    """Return for an ok finding (or None: nothing to say); end the test otherwise."""
    if finding is None or finding.ok:
        return
    conclude(finding, config)


def require(
    feature: Feature,
    check: str | None = None,
    *,
    identity: tuple[str, str | None] | None = None,
) -> None:
    """Return when the probed feature is available; skip when absent; fail when broken (xfail
    instead when ``identity``'s engine version documents exactly that breakage)."""
    if feature.available:
        return
    if feature.broken and identity is not None:
        excuse(identity, feature.name, feature)
    conclude(feature.finding(check))


def verdict(identity: tuple[str, str | None], finding: Finding) -> None:
    """Judge ``finding``, excused (xfail) when it shows a documented deviation of its check on
    this engine version."""
    if not finding.ok:
        excuse(identity, finding.check, finding)
    judge(finding)


def excuse(identity: tuple[str, str | None], check: str, evidence: Any) -> None:
    """xfail when this engine version is known to fail ``check`` AND the evidence shows it."""
    from pytest_gpuinfer.compat import deviations

    judge(deviations.excuse(identity, check, evidence))


def excuse_all(identity: tuple[str, str | None], check: str, evidence: list[Any]) -> None:
    """xfail when every piece of evidence shows a documented deviation of ``check``."""
    from pytest_gpuinfer.compat import deviations

    judge(deviations.excuse_all(identity, check, evidence))


def _unmet_finding(exc: BaseException) -> Finding | None:
    """The finding an Unmet carries, else None (without importing the compat package: if it
    is not loaded, nothing raised an Unmet)."""
    findings = sys.modules.get("pytest_gpuinfer.compat.findings")
    if findings is not None and isinstance(exc, findings.Unmet):
        finding: Finding = exc.finding
        return finding
    return None


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    """An Unmet raised in a test becomes the outcome its finding asks for."""
    try:
        return (yield)
    except Exception as exc:
        finding = _unmet_finding(exc)
        if finding is None:
            raise
    conclude(finding)  # outside the except block: no "during handling" chain in the report


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    """An Unmet raised while a fixture sets up becomes the outcome its finding asks for."""
    try:
        return (yield)
    except Exception as exc:
        finding = _unmet_finding(exc)
        if finding is None:
            raise
    conclude(finding)
