"""Fixtures for the plugin's own tests: the fake server's command line, fake GPUs."""

from __future__ import annotations

import contextlib
import importlib
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from fake_nvml import H100, L4, make_fake_nvml

# The plugin imports its layers lazily (an installed plugin must stay cheap). Import the ones these
# tests monkeypatch here, once: pytester's in-process runs drop modules first imported inside them,
# and a patch would land on a module object the next run no longer uses.
import pytest_gpuinfer.hardware.gpu  # noqa: F401  (isort: keep after the fakes)

# Modules that must outlive pytester's in-process runs, which drop what a run first imported (pytest
# 8.1 does, and on any version a module imported there first is a fresh copy in the next run):
# numpy 2 refuses a second import in one process ("cannot load module more than once"), and httpx
# caches httpcore's exception classes on first use, so a fresh httpcore's ConnectError or
# ReadTimeout would escape unmapped (not an httpx.HTTPError). Imported here, they are never dropped.
for _module in ("numpy", "fastdigest", "pyarrow", "httpcore", "httpx", "h11", "anyio"):
    with contextlib.suppress(ImportError):
        importlib.import_module(_module)

FAKE_SERVER = Path(__file__).with_name("fake_server.py")


@pytest.fixture(autouse=True)
def not_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every plugin test as outside CI: the suites they run in-process size themselves by
    ``CI`` (short versions), and these tests choose their sizes with --load-scale instead. A test
    of the short versions sets ``CI=true`` itself. (Unset, not "false": pytest also reads the
    variable's presence, to print whole failure messages in the short summary.)"""
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture
def fake_server_command() -> Callable[..., str]:
    """Build a --server-command value running fake_server.py with the given flags."""

    def build(*flags: str) -> str:
        return shlex.join([sys.executable, str(FAKE_SERVER), "--port", "{port}", *flags])

    return build


@pytest.fixture
def fake_gpus(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Make the plugin see two GPUs (an H100 and an L4) through a fake NVML."""
    fake = make_fake_nvml([H100, L4])
    monkeypatch.setattr("pytest_gpuinfer.hardware.gpu.load_nvml", lambda: fake)
    return fake
