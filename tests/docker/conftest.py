"""Fixtures for the docker target's tests: a daemon client, the local images, labelled containers.

Everything here skips, naming what is missing, when no Docker daemon answers or the images have
not been built (``bash dockerfiles/build-images.sh``, run by scripts/setup.d/30-docker.sh).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_gpuinfer.targets import docker as docker_target

from .docker_helpers import labelled_containers

SIM_IMAGE = os.environ.get("GPUINFER_DOCKER_SIM_IMAGE", "gpuinfer/sim:local")
"""The simulator image (NOT a real engine), for lifecycle tests."""


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client for the local Docker daemon; skips with the reason when there is none."""
    try:
        client = docker_target.docker_client(timeout_s=10)
    except docker_target.DockerUnavailable as exc:
        pytest.skip(f"no Docker daemon: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def sim_image(docker_client: Any) -> str:
    """The simulator image's name; skips when it has not been built."""
    import docker.errors

    try:
        docker_client.images.get(SIM_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"image {SIM_IMAGE} not built: run `bash dockerfiles/build-images.sh`")
    return SIM_IMAGE


@pytest.fixture
def no_new_containers(docker_client: Any) -> Iterator[None]:
    """Fail the test when a container it launched (in this process) is still there afterwards."""
    mine = {"LABEL_PYTEST_PID": str(os.getpid())}
    before = {c.id for c in labelled_containers(docker_client, **mine)}
    yield
    left = [c for c in labelled_containers(docker_client, **mine) if c.id not in before]
    for container in left:
        container.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"
