"""Launch, readiness, failure stories and teardown of servers, with a fake server (pytester)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_nvml import H100
from interrupted_pytest import pytest_process, wait_for_flag

from pytest_gpuinfer.targets.process import free_port

USES_SERVER = """
def test_talks_to_server(inference_server, http_client):
    assert inference_server.launched
    response = http_client.post("/v1/completions", json={"model": inference_server.model})
    assert response.status_code == 200
"""


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_all_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait for ``pids`` to exit; return those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if pid_alive(pid)]


def test_launch_use_and_stop_whole_group(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids.json"
    pytester.makepyfile(USES_SERVER)
    command = fake_server_command("--children", "2", "--pidfile", str(pidfile))
    result = pytester.runpytest("--engine=command", f"--server-command={command}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*target: command fake-1.0, model fake-model at http://127.0.0.1:*; cold start * s; log *"]
    )
    pids = json.loads(pidfile.read_text())
    assert len(pids) == 3
    assert wait_all_gone(pids, timeout=2) == [], "server or its children outlived the run"


def test_server_that_exits_fails_fast_with_log_tail(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str]
) -> None:
    pytester.makepyfile(USES_SERVER + USES_SERVER.replace("test_talks", "test_again"))
    command = fake_server_command("--exit-code", "3")
    started = time.monotonic()
    result = pytester.runpytest(
        "--engine=command", f"--server-command={command}", "--server-timeout=120"
    )
    assert time.monotonic() - started < 30, "did not fail fast on a dead server"
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "could not start command: the server exited with code 3 before it was ready" in out
    assert "simulated startup failure (CUDA out of memory)" in out, "log tail missing"
    assert "failed to start earlier in this run" in out, "second test should refer to the first"
    # Count in the ERRORS section: with CI set, pytest's short summary repeats whole messages.
    errors_section = out.split("short test summary info")[0]
    assert errors_section.count("simulated startup failure") == 1, "log tail shown more than once"
    assert "Traceback" not in out


def test_server_never_ready_times_out_with_story(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str], tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids.json"
    pytester.makepyfile(USES_SERVER)
    command = fake_server_command("--never-ready", "--pidfile", str(pidfile))
    started = time.monotonic()
    result = pytester.runpytest(
        "--engine=command", f"--server-command={command}", "--server-timeout=2"
    )
    elapsed = time.monotonic() - started
    assert elapsed < 20, f"timeout of 2 s took {elapsed:.1f} s"
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*could not start command: the server was not ready after 2 s*last check: "
            "GET /health answered 503*",
            "*last 100 lines of the server log*",
            "*fake server starting on port*",
        ]
    )
    assert wait_all_gone(json.loads(pidfile.read_text()), timeout=2) == []


def test_server_dying_mid_run_fails_later_tests_with_story(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str]
) -> None:
    pytester.makepyfile(
        """
        import time

        def test_first(inference_server, http_client):
            assert http_client.post("/v1/completions", json={}).status_code == 200
            time.sleep(0.5)

        def test_second(inference_server):
            raise AssertionError("must not run against a dead server")
        """
    )
    command = fake_server_command("--die-after-requests", "1")
    result = pytester.runpytest("--engine=command", f"--server-command={command}")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*the command server at http://127.0.0.1:* exited with code 7 during the run*",
            "*fake server: dying after request 1*",
        ]
    )


def test_gpu_selection_pins_launched_server_by_uuid(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str], fake_gpus: object
) -> None:
    pytester.makepyfile(
        f"""
        def test_env(inference_server, http_client):
            assert inference_server.gpu_uuids == ("{H100["uuid"]}",)
            env = http_client.get("/env").json()
            assert env["CUDA_VISIBLE_DEVICES"] == "{H100["uuid"]}"
        """
    )
    pinned = pytester.runpytest(
        "--engine=command", f"--server-command={fake_server_command()}", "--gpu=0"
    )
    pinned.assert_outcomes(passed=1)
    unpinned = pytester.runpytest("--engine=command", f"--server-command={fake_server_command()}")
    unpinned.assert_outcomes(failed=1)


PRIORITY = """
import os
from pathlib import Path


def test_priority(inference_server):
    pid = inference_server.process.pid
    print("server nice", os.getpriority(os.PRIO_PROCESS, pid))
    group = Path(f"/proc/{pid}/autogroup")
    print("server autogroup", group.read_text().strip() if group.exists() else "none")
    print("client autogroup", Path("/proc/self/autogroup").read_text().strip()
          if group.exists() else "none")
"""


def _autogroups_on() -> bool:
    """True where the kernel groups sessions for scheduling (the default target's case)."""
    switch = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return switch.exists() and switch.read_text().strip() == "1"


def test_server_nice_lowers_the_launched_server_and_its_autogroup(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str]
) -> None:
    """--server-nice=19: the server runs at nice 19, its session's autogroup too (a process's
    own nice does not weigh against another session's), and the summary says so; by default
    it stays equal to the client's."""
    pytester.makepyfile(PRIORITY)
    command = ("--engine=command", f"--server-command={fake_server_command()}", "-s")
    lowered = pytester.runpytest(*command, "--server-nice=19")
    lowered.assert_outcomes(passed=1)
    lowered.stdout.fnmatch_lines(["*server nice 19"])
    if _autogroups_on():
        lowered.stdout.fnmatch_lines(
            [
                "server autogroup /autogroup-* nice 19",
                "target: *; CPU priority nice 19, its session's autogroup too; log *",
            ]
        )
        assert "client autogroup /autogroup-* nice 19" not in lowered.stdout.str()
    equal = pytester.runpytest(*command)
    equal.assert_outcomes(passed=1)
    equal.stdout.fnmatch_lines(["*server nice 0"])
    assert "CPU priority" not in equal.stdout.str()
    simulator = pytester.runpytest("--engine=sim", "-s", "--server-nice=7")
    simulator.assert_outcomes(passed=1)
    simulator.stdout.fnmatch_lines(["*server nice 7"])


@pytest.mark.parametrize("value", ["20", "-1", "abc", "2.5"])
def test_server_nice_out_of_range_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--engine=sim", f"--server-nice={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--server-nice*"])


@pytest.fixture
def running_fake_server(fake_server_command: Callable[..., str]) -> Iterator[tuple[str, int]]:
    """A fake server started outside the plugin, as --endpoint users have."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("fake_server.py")),
            "--port",
            str(port),
            "--model",
            "their-model",
            "--api-key",
            "sekrit-key-123",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"http://127.0.0.1:{port}", proc.pid
    proc.kill()
    proc.wait()


def test_endpoint_attaches_without_launching_or_stopping(
    pytester: pytest.Pytester, running_fake_server: tuple[str, int]
) -> None:
    url, pid = running_fake_server
    pytester.makepyfile(
        """
        def test_attached(inference_server, http_client):
            assert not inference_server.launched
            assert inference_server.model == "their-model"
            assert inference_server.engine_version == "fake-1.0"
            assert inference_server.max_model_len == 512
            assert http_client.post("/v1/completions", json={}).status_code == 200
        """
    )
    result = pytester.runpytest(f"--endpoint={url}/v1/", "--api-key=sekrit-key-123")
    result.assert_outcomes(passed=1)
    assert pid_alive(pid), "an attached endpoint must not be stopped"


def test_endpoint_wrong_model_lists_what_it_serves(
    pytester: pytest.Pytester, running_fake_server: tuple[str, int]
) -> None:
    url, _ = running_fake_server
    pytester.makepyfile(USES_SERVER)
    result = pytester.runpytest(f"--endpoint={url}", "--model=other", "--api-key=sekrit-key-123")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*does not serve model 'other'; it lists: their-model*"])


def test_api_key_is_used_but_never_printed(
    pytester: pytest.Pytester, running_fake_server: tuple[str, int]
) -> None:
    url, _ = running_fake_server
    pytester.makepyfile(
        """
        def test_fails_on_purpose(inference_server, http_client):
            assert http_client.post("/v1/completions", json={}).status_code == 200
            raise AssertionError(repr(inference_server))
        """
    )
    result = pytester.runpytest(f"--endpoint={url}", "--api-key=sekrit-key-123", "-l", "-vv")
    result.assert_outcomes(failed=1)
    everything = result.stdout.str() + result.stderr.str()
    assert "sekrit-key-123" not in everything


def test_endpoint_key_from_environment(
    pytester: pytest.Pytester,
    running_fake_server: tuple[str, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, _ = running_fake_server
    monkeypatch.setenv("OPENAI_API_KEY", "sekrit-key-123")
    pytester.makepyfile(USES_SERVER.replace("    assert inference_server.launched\n", ""))
    pytester.runpytest(f"--endpoint={url}").assert_outcomes(passed=1)
    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    result = pytester.runpytest(f"--endpoint={url}", "--server-timeout=2")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*GET /v1/models answered 401*"])


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_run_leaves_no_server(
    pytester: pytest.Pytester,
    fake_server_command: Callable[..., str],
    tmp_path: Path,
    signame: str,
) -> None:
    pidfile = tmp_path / "pids.json"
    flag = tmp_path / "test-started"
    pytester.makepyfile(
        f"""
        import pathlib, time

        def test_long(inference_server):
            pathlib.Path({str(flag)!r}).write_text("up")
            time.sleep(120)
        """
    )
    command = fake_server_command("--children", "2", "--pidfile", str(pidfile))
    args = ["--engine=command", f"--server-command={command}", str(pytester.path)]
    with pytest_process(args, pytester.path) as proc:
        wait_for_flag(proc, flag, "the test")
        pids = json.loads(pidfile.read_text())
        assert all(pid_alive(pid) for pid in pids)
        os.kill(proc.pid, getattr(signal, signame))
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in output or "Interrupted" in output, output[-2000:]
    assert wait_all_gone(pids, timeout=5) == [], f"left behind after {signame}: {output[-1500:]}"


def test_server_log_is_attached_only_to_failures_that_used_it(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str]
) -> None:
    pytester.makepyfile(
        """
        def test_uses_server(inference_server):
            raise AssertionError("failed while using the server")

        def test_does_not(inference_server_free=None):
            raise AssertionError("failed without the server")
        """
    )
    result = pytester.runpytest("--engine=command", f"--server-command={fake_server_command()}")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert out.count("gpuinfer server log (command), last lines") == 1, out
    section = out[out.index("gpuinfer server log (command)") :]
    assert "fake server starting on port" in section
    assert (
        out.index("_ test_uses_server _")
        < out.index("gpuinfer server log")
        < out.index("_ test_does_not _")
    )


REGISTERING_CONFTEST = """
import shlex
import sys

from pytest_gpuinfer.targets.launcher import CommandLauncher, LaunchPlan


class FakeEngine(CommandLauncher):
    name = "fake"
    summary = "the fake server, registered by a conftest"

    def plan(self, ctx):
        argv = [sys.executable, {server!r}, "--port", str(ctx.port), *ctx.engine_args]
        return LaunchPlan(argv, dict(ctx.env), "9.9", None, "fake-model")


def pytest_gpuinfer_add_targets(config):
    return [FakeEngine()]
"""


def test_engine_added_through_the_hook_is_launched_and_stopped(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A conftest adds an engine with pytest_gpuinfer_add_targets; --engine picks it."""
    pidfile = tmp_path / "pids.json"
    fake_server = Path(__file__).with_name("fake_server.py")
    pytester.makeconftest(REGISTERING_CONFTEST.format(server=str(fake_server)))
    pytester.makepyfile(USES_SERVER)
    result = pytester.runpytest("--engine", "fake", f"--engine-arg=--pidfile {pidfile}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*target: fake*, model fake-model at http://127.0.0.1:*"])
    assert wait_all_gone(json.loads(pidfile.read_text()), timeout=2) == []
    unknown = pytester.runpytest("--engine=nonesuch")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["ERROR: --engine 'nonesuch' is not known; choose one of: *fake*"])


def test_two_engines_with_one_name_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_gpuinfer.targets.launcher import CommandLauncher

        class NotVLLM(CommandLauncher):
            name = "vllm"
            summary = "a second vllm"

        def pytest_gpuinfer_add_targets(config):
            return [NotVLLM()]
        """
    )
    pytester.makepyfile(USES_SERVER)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: pytest_gpuinfer_add_targets: engine 'vllm' is registered twice*"]
    )


def test_children_that_left_the_process_group_are_stopped_too(
    pytester: pytest.Pytester, fake_server_command: Callable[..., str], tmp_path: Path
) -> None:
    """A server child that called setsid escapes the group signal; teardown still ends it."""
    pidfile = tmp_path / "pids.json"
    pytester.makepyfile(USES_SERVER)
    command = fake_server_command("--escaped-children", "1", "--pidfile", str(pidfile))
    pytester.runpytest("--engine=command", f"--server-command={command}").assert_outcomes(passed=1)
    pids = json.loads(pidfile.read_text())
    assert len(pids) == 2
    assert wait_all_gone(pids, timeout=5) == [], "a child outside the group outlived the run"
