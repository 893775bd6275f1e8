"""A conftest for pytester runs in which the load engine's self-check reads the machine busy.

Red tests of verdicts that must not be judged on a starved client (and must be judged once it is
not) need the self-check's answer fixed: on shared cores it is not predictable. The rates stay the
simulator's, measured; only ``client_bound`` and its reasons are forced.
"""

from __future__ import annotations

_CONFTEST = """
import dataclasses

import pytest

from pytest_gpuinfer.load.selfcheck import SelfCheck

FLAGGED_RUNS = {flagged}  # load runs (a warm-up is one) the self-check reads busy, then quiet


@pytest.fixture(autouse=True)
def machine_busy_in_the_first_runs(monkeypatch):
    measured = SelfCheck.from_figures.__func__
    runs = []

    def flagged(cls, figures, limits):
        check = measured(cls, figures, limits)
        runs.append(1)
        if len(runs) <= FLAGGED_RUNS:
            return dataclasses.replace(check, client_bound=True, reasons=("machine busy (test)",))
        return dataclasses.replace(check, client_bound=False, reasons=())

    monkeypatch.setattr(SelfCheck, "from_figures", classmethod(flagged))
"""


def busy_machine_conftest(flagged_runs: int) -> str:
    """conftest text: the self-check flags the first ``flagged_runs`` load runs, then none."""
    return _CONFTEST.format(flagged=flagged_runs)
