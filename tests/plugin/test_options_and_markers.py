"""Options, ini keys, markers, usage errors and the report header, through pytester."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from fake_nvml import H100

COLLECTED_TEST = """
def test_collected(request):
    assert request.node.name == "test_collected"
"""
"""A minimal inner test for runs whose point is how options are handled."""

FLAGS = (
    "--gpu",
    "--endpoint",
    "--engine",
    "--model",
    "--engine-arg",
    "--server-timeout",
    "--server-port",
    "--server-scope",
    "--api-key",
    "--server-command",
    "--min-driver-version",
    "--min-cuda-version",
    "--max-cold-start",
    "--model-manifest",
)


def test_help_lists_every_option_in_one_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    assert result.ret == 0
    text = result.stdout.str()
    group = text[text.index("pytest-gpuinfer: LLM inference server testing") :]
    for flag in FLAGS:
        assert f"  {flag}" in group, f"{flag} missing from the gpuinfer help group"
    for ini in ("gpuinfer_gpu", "gpuinfer_endpoint", "gpuinfer_engine", "gpuinfer_api_key"):
        assert ini in text


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.compat
        @pytest.mark.perf
        @pytest.mark.load
        @pytest.mark.oom
        @pytest.mark.batch
        def test_all_markers(request):
            names = {mark.name for mark in request.node.iter_markers()}
            assert {"compat", "perf", "load", "oom", "batch"} <= names
        """
    )
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(passed=1)
    markers = pytester.runpytest("--markers").stdout.str()
    for name in ("compat:", "perf:", "load:", "oom:", "leak(", "batch:", "requires_gpu(count=1"):
        assert f"@pytest.mark.{name}" in markers


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine=tgi-nonsense"], "--engine 'tgi-nonsense' is not known"),
        (["--endpoint=localhost:8000"], "--endpoint 'localhost:8000' is not an http(s) URL"),
        (["--endpoint=http://127.0.0.1:99999"], "has an invalid port"),
        (["--gpu=7"], "--gpu '7' names no GPU here"),
        (["--model=./no/such/model"], "--model './no/such/model': no such file or directory"),
        (["--server-timeout=soon"], "--server-timeout expects a number"),
        (["--server-timeout=0"], "--server-timeout must be positive"),
        (["--server-scope=galaxy"], "--server-scope 'galaxy' is not a pytest scope"),
        (["--engine=command"], "--engine command needs --server-command"),
        (["--engine=command", "--server-command=serve --port 8000"], "has no {port} placeholder"),
        (["--server-command=serve {port}"], "only used with --engine command"),
        (["--min-cuda-version=twelve"], "--min-cuda-version expects a dotted version"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile(COLLECTED_TEST)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0], result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_port_already_taken_is_a_usage_error(pytester: pytest.Pytester, busy_port: int) -> None:
    pytester.makepyfile(COLLECTED_TEST)
    result = pytester.runpytest(f"--server-port={busy_port}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --server-port {busy_port}: the port is already in use*"])


def test_ini_keys_work_and_command_line_wins(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ngpuinfer_engine = nonsense-from-ini\n")
    pytester.makepyfile(COLLECTED_TEST)
    from_ini = pytester.runpytest()
    assert from_ini.ret == pytest.ExitCode.USAGE_ERROR
    from_ini.stderr.fnmatch_lines(["ERROR: --engine 'nonsense-from-ini' is not known*"])
    assert pytester.runpytest("--engine=sim").ret == 0


def test_header_in_cpu_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(COLLECTED_TEST)
    result = pytester.runpytest("--engine=sim")
    result.stdout.fnmatch_lines(
        [
            "gpuinfer *: target sim (simulator, not a real engine), model sim-model*",
            "gpuinfer: GPUs: *",
        ]
    )


def test_header_lists_fake_gpus_and_selection(
    pytester: pytest.Pytester, fake_gpus: SimpleNamespace
) -> None:
    pytester.makepyfile(COLLECTED_TEST)
    result = pytester.runpytest(f"--gpu={H100['uuid']}")
    result.stdout.fnmatch_lines(
        ["gpuinfer: GPUs: 2 (driver 580.65.06, CUDA 13.0): 0: NVIDIA H100 80GB HBM3*; using --gpu*"]
    )


def test_requires_gpu_skips_with_reason_without_gpu(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requires_gpu
        def test_needs_gpu():
            raise AssertionError("must not run without a GPU")
        """
    )
    result = pytester.runpytest("-rs", "--engine=sim")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*requires 1 GPU(s); none available (*"])


def test_requires_gpu_count_and_memory_with_fake_gpus(
    pytester: pytest.Pytester, fake_gpus: SimpleNamespace
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requires_gpu(count=2)
        def test_two(gpu_inventory):
            assert len(gpu_inventory.gpus) == 2

        @pytest.mark.requires_gpu(count=3)
        def test_three():
            raise AssertionError("only two GPUs")

        @pytest.mark.requires_gpu(min_memory_gb=40)
        def test_big(gpu):
            assert gpu.memory_total_gb >= 40

        @pytest.mark.requires_gpu(count=2, min_memory_gb=40)
        def test_two_big():
            raise AssertionError("only one GPU has 40 GiB")
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines_random(
        [
            "*requires 3 GPU(s); 2 available*",
            "*requires 2 GPU(s) with >= 40 GiB; 1 of 2 qualify (largest has 80 GiB)*",
        ]
    )


def test_gpu_selection_limits_requires_gpu(
    pytester: pytest.Pytester, fake_gpus: SimpleNamespace
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requires_gpu(min_memory_gb=40)
        def test_big():
            raise AssertionError("--gpu 1 selected the 24 GiB L4")

        def test_gpu_fixture(gpu):
            assert gpu.name == "NVIDIA L4"
        """
    )
    result = pytester.runpytest("-rs", "--gpu=1")
    result.assert_outcomes(passed=1, skipped=1)


def test_conftest_defining_model_and_gpu_still_runs(pytester: pytest.Pytester) -> None:
    """A project whose conftest already owns --model and --gpu keeps them; ours answer as
    --gpuinfer-model / --gpuinfer-gpu."""
    pytester.makeconftest(
        """
        def pytest_addoption(parser):
            parser.addoption("--model", default="resnet50", help="the project's own model")
            parser.addoption("--gpu", action="store_true", help="the project's own switch")
        """
    )
    pytester.makepyfile(
        """
        def test_own_options(request, pytestconfig):
            assert request.config.getoption("--model") == "bert"
            assert request.config.getoption("--gpu") is True
            assert pytestconfig.getoption("gpuinfer_model") is None
        """
    )
    result = pytester.runpytest("--model", "bert", "--gpu", "--engine=sim")
    result.assert_outcomes(passed=1)
    bad = pytester.runpytest("--gpuinfer-model=./no/such/model")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: --gpuinfer-model './no/such/model': no such file*"])


def test_every_option_has_a_gpuinfer_alias(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(COLLECTED_TEST)
    result = pytester.runpytest("--gpuinfer-engine", "tgi-nonsense")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --engine 'tgi-nonsense' is not known*"])
    lines = pytester.runpytest("--help").stdout.lines
    for flag in FLAGS:
        alias = flag.replace("--", "--gpuinfer-", 1)
        assert any(
            line.lstrip().startswith(f"{flag}=") and f", {alias}=" in line for line in lines
        ), f"{alias} is not listed beside {flag}"


@pytest.fixture
def model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model file outside the project folder."""
    model = tmp_path_factory.mktemp("models") / "m.gguf"
    model.write_bytes(b"GGUF")
    return str(model)


CONFIGURED_PROJECT = """
import pytest

@pytest.mark.project_mark
def test_configured(request, pytestconfig):
    assert pytestconfig.inipath is not None and pytestconfig.inipath.name == "tox.ini"
    assert str(pytestconfig.getoption("gpuinfer_model")).endswith("m.gguf")
    assert not pytestconfig.pluginmanager.has_plugin("cacheprovider")
"""


def test_path_value_in_equals_form_keeps_the_project_configuration(
    pytester: pytest.Pytester, model_file: str
) -> None:
    """``--model=/elsewhere/m.gguf`` keeps the project's rootdir, ini file and addopts."""
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\nmarkers =\n    project_mark: ours\n")
    pytester.makepyfile(CONFIGURED_PROJECT)
    result = pytester.runpytest_subprocess(
        "--strict-markers", "--engine=sim", f"--model={model_file}"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"rootdir: {pytester.path}*", "configfile: tox.ini*"])


def test_path_value_in_space_form_that_moves_the_rootdir_is_a_usage_error(
    pytester: pytest.Pytester, model_file: str
) -> None:
    """``--model /elsewhere/m.gguf`` would silently drop the project's configuration (pytest
    reads the path as a test path before the plugin declares --model): say so and how to fix it."""
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\nmarkers =\n    project_mark: ours\n")
    pytester.makepyfile(CONFIGURED_PROJECT)
    result = pytester.runpytest_subprocess(
        "--strict-markers", "--engine=sim", "--model", model_file
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --model {model_file}: pytest took the value for a test path*"
            f"write --model={model_file}"
        ]
    )


def test_path_value_in_space_form_with_test_paths_given_is_fine(
    pytester: pytest.Pytester, model_file: str
) -> None:
    """With the project's test path on the command line the rootdir does not move: no error."""
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\nmarkers =\n    project_mark: ours\n")
    test_file = pytester.makepyfile(CONFIGURED_PROJECT)
    result = pytester.runpytest_subprocess(
        str(test_file), "--strict-markers", "--engine=sim", "--model", model_file
    )
    result.assert_outcomes(passed=1)


def test_rootdir_finder_is_asked_with_only_the_arguments_it_takes(
    pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest's private ``determine_setup`` (run on the 8.1 floor and the latest pytest in CI):
    the real one finds this run's own rootdir; a finder with fewer keywords gets only those; one
    that raises makes the check say nothing (None) rather than guess."""
    from pathlib import Path

    import _pytest.config.findpaths as findpaths

    from pytest_gpuinfer.plugin.options import _rootdir_without

    assert _rootdir_without(pytestconfig, set()) == pytestconfig.rootpath
    asked: dict[str, object] = {}

    def narrow(*, inifile: object, args: object, rootdir_cmd_arg: object) -> tuple[Path, None]:
        asked.update(inifile=inifile, args=args, rootdir_cmd_arg=rootdir_cmd_arg)
        return Path("/elsewhere"), None

    monkeypatch.setattr(findpaths, "determine_setup", narrow)
    assert _rootdir_without(pytestconfig, set()) == Path("/elsewhere")
    assert set(asked) == {"inifile", "args", "rootdir_cmd_arg"}

    def changed(**_: object) -> None:
        raise TypeError("determine_setup() takes a new shape")

    monkeypatch.setattr(findpaths, "determine_setup", changed)
    assert _rootdir_without(pytestconfig, set()) is None
