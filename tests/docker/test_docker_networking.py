"""Docker networking: port conflicts named, containers reaching each other by name, the server
published on 127.0.0.1 only unless asked.

The simulator image (gpuinfer/sim:local) runs the plugin's SIMULATOR, not a real engine: these
tests are about Docker's networking, which is the same for any server in a container.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from pytest_gpuinfer.targets.docker import reach_from_container

REACHABILITY = """
import socket

def reachable(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False

def test_where_it_answers(inference_server):
    port = int(inference_server.base_url.rsplit(":", 1)[1])
    print("LOOPBACK", reachable("127.0.0.1", port))
    print("OUTSIDE", reachable({outside!r}, port))
"""


def outside_address() -> str:
    """This machine's first IPv4 address that is neither loopback nor a Docker bridge."""
    for name, addresses in psutil.net_if_addrs().items():
        if name == "lo" or name.startswith(("docker", "br-", "veth")):
            continue
        for address in addresses:
            if address.family == socket.AF_INET:
                return str(address.address)
    pytest.skip("this machine has no non-loopback IPv4 address to test from")


@pytest.mark.parametrize(
    ("flags", "outside"),
    [((), False), (("--server-host=0.0.0.0",), True)],
    ids=["default", "asked"],
)
def test_published_on_loopback_and_elsewhere_only_when_asked(
    pytester: pytest.Pytester, sim_image: str, flags: tuple[str, ...], outside: bool
) -> None:
    pytester.makepyfile(REACHABILITY.format(outside=outside_address()))
    result = pytester.runpytest("--engine=docker", f"--image={sim_image}", "-s", *flags)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*LOOPBACK True*", f"*OUTSIDE {outside}*"])


@pytest.fixture
def user_network(docker_client: Any) -> Iterator[str]:
    """A user-defined bridge network, removed afterwards."""
    network = docker_client.networks.create(f"gpuinfer-net-{uuid.uuid4().hex[:8]}", driver="bridge")
    try:
        yield network.name
    finally:
        network.remove()


@pytest.fixture
def named_server(docker_client: Any, sim_image: str, user_network: str) -> Iterator[str]:
    """A simulator container on the user network; yields its name."""
    name = f"gpuinfer-server-{uuid.uuid4().hex[:8]}"
    container = docker_client.containers.run(
        sim_image,
        ["--port", "8000", "--host", "0.0.0.0"],
        name=name,
        network=user_network,
        detach=True,
    )
    try:
        yield name
    finally:
        container.remove(force=True)


def test_two_containers_on_a_user_network_reach_each_other_by_name(
    docker_client: Any, sim_image: str, user_network: str, named_server: str
) -> None:
    url = f"http://{named_server}:8000/v1/models"
    reach = reach_from_container(docker_client, sim_image, network=user_network, url=url)
    if not reach.ok and "Connection refused" in reach.detail:  # still starting: one retry
        reach = reach_from_container(docker_client, sim_image, network=user_network, url=url)
    assert reach.ok, reach.line()
    assert reach.detail.startswith("200"), reach.line()


def test_default_bridge_does_not_resolve_names(
    docker_client: Any, sim_image: str, named_server: str
) -> None:
    """The red side: Docker's default bridge has no DNS for container names."""
    url = f"http://{named_server}:8000/v1/models"
    reach = reach_from_container(docker_client, sim_image, network="bridge", url=url)
    assert not reach.ok, reach.line()
    assert "Name or service not known" in reach.detail or "resolution" in reach.detail, reach.line()
