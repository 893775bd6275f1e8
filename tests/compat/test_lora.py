"""LoRA adapters: listed with the base as parent, applied (outputs differ from the base, stably),
loaded and unloaded at runtime, a broken adapter refused with a clear error.

Runs where the server lists an adapter on the served model (probed; vLLM: --enable-lora
--lora-modules NAME=PATH, which ``--model builtin:qwen3`` sets with its built-in adapter);
runtime loading where the server allows it and the adapter files are on this machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_gpuinfer.compat import adapters
from pytest_gpuinfer.compat.target import CompatTarget
from pytest_gpuinfer.models import builtin, lora
from pytest_gpuinfer.plugin.compat_outcomes import excuse, judge, require, verdict
from pytest_gpuinfer.plugin.fixtures import gpuinfer_settings_of
from pytest_gpuinfer.targets import InferenceServer


@pytest.fixture
def lora_target(compat_target: CompatTarget) -> CompatTarget:
    """The target, after the probe showed an adapter on the served model."""
    require(adapters.probe(compat_target.probe), identity=compat_target.identity)
    return compat_target


@pytest.fixture
def served_builtin(
    inference_server: InferenceServer, pytestconfig: pytest.Config
) -> builtin.BuiltinModel | None:
    """The built-in model this run launched (None for a user's model or an --endpoint)."""
    if not inference_server.launched:
        return None
    return builtin.resolve(gpuinfer_settings_of(pytestconfig).model)


@pytest.fixture
def local_adapter(served_builtin: builtin.BuiltinModel | None) -> Path:
    """Adapter files on this machine that fit the served model: the built-in model's own."""
    if served_builtin is None or served_builtin.pooling:
        pytest.skip(
            "runtime loading needs adapter files on this machine that fit the served model; "
            "the built-in models have them (--model builtin:qwen3)"
        )
    return served_builtin.ensure_adapter()


def test_adapter_is_listed(
    lora_target: CompatTarget, served_builtin: builtin.BuiltinModel | None
) -> None:
    """The adapter is in /v1/models with the base model as its parent."""
    serves_own = served_builtin is not None and served_builtin.serve_adapter
    expected = served_builtin.adapter_name if served_builtin and serves_own else None
    verdict(lora_target.identity, adapters.adapter_listed(lora_target, expected))


def test_adapter_changes_outputs_stably(lora_target: CompatTarget) -> None:
    """Greedy outputs through the adapter differ from the base's and repeat exactly."""
    for name in adapters.listed(lora_target.probe):
        verdict(lora_target.identity, adapters.differs_and_stable(lora_target, name))


def test_runtime_load_and_unload(
    lora_target: CompatTarget,
    local_adapter: Path,
    served_builtin: builtin.BuiltinModel | None,
) -> None:
    """An adapter loaded at runtime is listed and applied like the same files served from the
    start; after unloading it is gone."""
    require(adapters.runtime_probe(lora_target.probe), identity=lora_target.identity)
    reference = served_builtin.adapter_name if served_builtin else None
    if reference not in adapters.listed(lora_target.probe):
        reference = None
    verdict(
        lora_target.identity, adapters.runtime_load_unload(lora_target, local_adapter, reference)
    )


@pytest.mark.parametrize("case", ["weights that do not fit the model", "no such directory"])
def test_broken_adapter_is_refused(
    lora_target: CompatTarget,
    local_adapter: Path,
    served_builtin: builtin.BuiltinModel | None,
    tmp_path: Path,
    case: str,
) -> None:
    """A broken adapter gets a 4xx naming the problem, is not listed, the server lives on."""
    require(adapters.runtime_probe(lora_target.probe), identity=lora_target.identity)
    assert served_builtin is not None
    broken = tmp_path / "broken-adapter"
    if case == "weights that do not fit the model":
        lora.write_broken_adapter(served_builtin.ensure(), broken, served_builtin.served_name)
    finding, response = adapters.broken_refused(lora_target, broken, case)
    if not finding.ok:
        excuse(lora_target.identity, f"lora:broken adapter ({case})", response)
    judge(finding)
