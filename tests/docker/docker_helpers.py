"""Helpers for the docker tests (a module of its own: tests/plugin has a conftest too)."""

from __future__ import annotations

from typing import Any

from pytest_gpuinfer.targets import docker as docker_target


def labelled_containers(client: Any, **labels: str) -> list[Any]:
    """Containers (running or not) carrying the plugin's label and the given label values."""
    wanted = [docker_target.LABEL_MANAGED] + [
        f"{getattr(docker_target, name)}={value}" for name, value in labels.items()
    ]
    return list(client.containers.list(all=True, filters={"label": wanted}))
