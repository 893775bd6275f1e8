"""How the vLLM target builds its command line and environment."""

from __future__ import annotations

import sys
from pathlib import Path

from pytest_gpuinfer.targets import vllm


def test_command_uses_python_dash_m_and_loopback() -> None:
    argv = vllm.command(
        model="/m", port=8123, served_model_name="tiny", engine_args=(), default_max_model_len=1024
    )
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    assert argv[argv.index("--max-model-len") + 1] == "1024"


def test_user_engine_args_override_defaults() -> None:
    argv = vllm.command(
        model="/m",
        port=1,
        served_model_name="tiny",
        engine_args=("--max-model-len=2048", "--served-model-name", "mine", "--enforce-eager"),
        default_max_model_len=1024,
    )
    assert "1024" not in argv and "tiny" not in argv
    assert argv[-4:] == ["--max-model-len=2048", "--served-model-name", "mine", "--enforce-eager"]


def test_has_flag_forms() -> None:
    assert vllm.has_flag(["--max-model-len", "8"], "--max-model-len")
    assert vllm.has_flag(["--max-model-len=8"], "--max-model-len")
    assert not vllm.has_flag(["--max-model-len-x=8"], "--max-model-len")


def test_environment_cpu_defaults_and_offline() -> None:
    env = vllm.environment({"PATH": "/bin"}, has_gpu=False, offline=True)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == "/bin"
    kept = vllm.environment({"VLLM_CPU_KVCACHE_SPACE": "4"}, has_gpu=False, offline=False)
    assert kept["VLLM_CPU_KVCACHE_SPACE"] == "4" and "HF_HUB_OFFLINE" not in kept
    gpu_env = vllm.environment({}, has_gpu=True, offline=False)
    assert "VLLM_CPU_KVCACHE_SPACE" not in gpu_env


def test_local_version_reads_installed_distribution() -> None:
    version = vllm.local_version()
    try:
        import importlib.metadata as md

        expected = md.version("vllm-cpu")
    except md.PackageNotFoundError:
        try:
            expected = md.version("vllm")
        except md.PackageNotFoundError:
            expected = None
    assert version == expected


def test_engines_start_without_the_test_process_variables(tmp_path: Path) -> None:
    """vLLM (not our code) gets neither coverage's subprocess hook nor pytest's variables, so
    measuring the suites never slows the engine; the run's own environment is kept."""
    from pytest_gpuinfer.targets.base import LaunchContext
    from pytest_gpuinfer.targets.launcher import engine_env

    ctx = LaunchContext(engine="vllm", port=1, work_dir=tmp_path, env={"PYTEST_MINE": "kept"})
    base = {"COVERAGE_PROCESS_CONFIG": "x", "PYTEST_CURRENT_TEST": "t", "HOME": "/root"}
    env = engine_env(ctx, base)
    assert env == {"HOME": "/root", "PYTEST_MINE": "kept"}
