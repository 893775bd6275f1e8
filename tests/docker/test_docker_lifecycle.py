"""The docker target's lifecycle against a real Docker daemon, with the simulator image.

The simulator image (gpuinfer/sim:local) runs the plugin's SIMULATOR, not a real engine, behind
vLLM's command line: these tests check the plugin's container handling (start, readiness, a
request, a container that exits during start, one killed mid-test, teardown, SIGTERM, the stale
sweep), not an engine. The real engine in a container is checked by scripts/test.d/30-docker.sh.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from pytest_gpuinfer.targets import docker as docker_target

from .docker_helpers import labelled_containers

pytestmark = pytest.mark.usefixtures("no_new_containers")

USES_SERVER = """
import docker

def test_serves_from_a_labelled_container(inference_server, http_client):
    assert inference_server.engine == "docker" and inference_server.is_simulator
    response = http_client.post(
        "/v1/completions",
        json={"model": inference_server.model, "prompt": "hello", "max_tokens": 4},
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4
    handle = inference_server.process
    assert handle.returncode() is None
    container = docker.from_env().containers.get(handle.name)
    assert container.attrs["State"]["Pid"] == handle.pid > 0
    assert container.labels["io.gpuinfer.pytest-pid"] == str(__import__("os").getpid())
    binding = container.attrs["NetworkSettings"]["Ports"]["8000/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    assert inference_server.base_url == f"http://127.0.0.1:{binding['HostPort']}"
    models = [m for m in container.attrs["Mounts"] if m["Destination"].startswith("/models/")]
    assert len(models) == 1 and models[0]["RW"] is False, models
    assert container.attrs["HostConfig"]["AutoRemove"] is False
    assert "HF_HUB_OFFLINE=1" in container.attrs["Config"]["Env"]
"""


def test_start_ready_request_and_teardown(
    pytester: pytest.Pytester, sim_image: str, docker_client: Any
) -> None:
    pytester.makepyfile(USES_SERVER)
    result = pytester.runpytest("--engine=docker", f"--image={sim_image}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*target: docker (simulator, not a real engine)*cold start*"])
    assert labelled_containers(docker_client, LABEL_PYTEST_PID=str(os.getpid())) == []


def test_container_that_exits_during_start_fails_fast_with_code_and_log(
    pytester: pytest.Pytester, sim_image: str
) -> None:
    pytester.makepyfile(
        """
        def test_needs_server(inference_server):
            pass
        """
    )
    started = time.monotonic()
    result = pytester.runpytest(
        "--engine=docker",
        f"--image={sim_image}",
        "--engine-arg=--no-such-flag",
        "--server-timeout=300",
    )
    elapsed = time.monotonic() - started
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "the server exited with code 2 before it was ready" in out
    assert "exit code 2" in out
    assert "unrecognized arguments: --no-such-flag" in out, "the container's log tail is missing"
    assert "Traceback" not in out
    assert elapsed < 120, f"took {elapsed:.0f} s to notice a container that exited at once"


def test_container_killed_mid_run_fails_later_tests_with_its_story(
    pytester: pytest.Pytester, sim_image: str
) -> None:
    pytester.makepyfile(
        """
        import docker

        def test_kill_it(inference_server):
            docker.from_env().containers.get(inference_server.process.name).kill()

        def test_after(inference_server):
            pass
        """
    )
    result = pytester.runpytest("--engine=docker", f"--image={sim_image}")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the docker server at http://127.0.0.1:* exited with code 137*"])


def test_sigterm_mid_run_leaves_no_container(
    pytester: pytest.Pytester, sim_image: str, docker_client: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "test-started"
    pytester.makepyfile(
        f"""
        import pathlib, time

        def test_long(inference_server):
            pathlib.Path({str(flag)!r}).write_text("up")
            time.sleep(300)
        """
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--engine=docker",
            f"--image={sim_image}",
            str(pytester.path),
        ],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, f"pytest ended early:\n{proc.communicate()[0]}"
            assert time.monotonic() < deadline, "the test never started"
            time.sleep(0.2)
        mine = labelled_containers(docker_client, LABEL_PYTEST_PID=str(proc.pid))
        assert len(mine) == 1 and mine[0].status == "running"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert labelled_containers(docker_client, LABEL_PYTEST_PID=str(proc.pid)) == [], output
    assert "Traceback" not in output.split("KeyboardInterrupt")[0]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_containers_of_dead_runs_are_removed_at_start(
    pytester: pytest.Pytester, sim_image: str, docker_client: Any
) -> None:
    import socket

    def create(pid: int, start: str) -> Any:
        return docker_client.containers.create(
            sim_image,
            labels={
                docker_target.LABEL_MANAGED: "true",
                docker_target.LABEL_RUN_ID: f"test-sweep-{pid}",
                docker_target.LABEL_PYTEST_PID: str(pid),
                docker_target.LABEL_PYTEST_START: start,
                docker_target.LABEL_HOST: socket.gethostname(),
            },
        )

    gone = dead_pid()
    stale = create(gone, "1")
    ours = create(os.getpid(), docker_target.process_start_time(os.getpid()) or "")
    reused = create(os.getpid(), "not-our-start-time")  # same pid, another process: stale
    try:
        pytester.makepyfile("def test_nothing():\n    pass\n")
        result = pytester.runpytest("--engine=docker", f"--image={sim_image}")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*removed stale containers: *"])
        names = {c.name for c in docker_client.containers.list(all=True)}
        assert stale.name not in names, "a dead run's container was left"
        assert reused.name not in names, "a container of a reused pid was kept"
        assert ours.name in names, "a live run's container was removed"
    finally:
        for container in (stale, ours, reused):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def test_missing_image_is_a_usage_error(pytester: pytest.Pytester, docker_client: Any) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("--engine=docker", "--image=gpuinfer/no-such-image:0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*image gpuinfer/no-such-image:0 is not on this machine*docker pull*"]
    )
    assert "Traceback" not in result.stderr.str()


def test_port_in_use_is_a_usage_error(
    pytester: pytest.Pytester, sim_image: str, docker_client: Any
) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        pytester.makepyfile("def test_nothing():\n    pass\n")
        result = pytester.runpytest(
            "--engine=docker", f"--image={sim_image}", f"--server-port={port}"
        )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--server-port {port}:*in use*"])


def test_fixed_port_taken_by_another_container_fails_with_one_line(
    pytester: pytest.Pytester, sim_image: str, docker_client: Any
) -> None:
    """A port free at session start but taken before the launch: Docker's refusal, explained."""
    from pytest_gpuinfer.targets.process import free_port

    port = free_port()
    pytester.makepyfile(
        f"""
        import docker

        def test_needs_server(request):
            blocker = docker.from_env().containers.run(
                {sim_image!r}, ["--port", "8000", "--host", "0.0.0.0"], detach=True,
                ports={{"8000/tcp": ("127.0.0.1", {port})}},
            )
            try:
                request.getfixturevalue("inference_server")
            finally:
                blocker.remove(force=True)
        """
    )
    result = pytester.runpytest("--engine=docker", f"--image={sim_image}", f"--server-port={port}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*port conflict: 127.0.0.1:{port} is already in use*"])
