"""Embeddings on a pooling server: shape and dimension, single equals batch, determinism,
base64 equals float, over-long input rejected, /v1/models lists the model.

Runs where the server answers /v1/embeddings (probed; a generating vLLM has no such route and
the checks skip: serve a pooling model, e.g. ``--model builtin:qwen3-embed``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_gpuinfer.compat import embeddings
from pytest_gpuinfer.compat.target import CompatTarget
from pytest_gpuinfer.plugin.compat_outcomes import require, verdict


@pytest.fixture
def embedding_target(compat_target: CompatTarget) -> CompatTarget:
    """The target, after the probe showed that it serves embeddings."""
    require(embeddings.probe(compat_target.probe), identity=compat_target.identity)
    return compat_target


@pytest.fixture
def hidden_size(server_tokenizer: object, pytestconfig: pytest.Config) -> int | None:
    """The model's hidden size from its config.json when the files are here (else None)."""
    path = getattr(server_tokenizer, "name_or_path", None)
    config = Path(str(path)) / "config.json" if path else None
    if config is None or not config.is_file():
        return None
    value = json.loads(config.read_text()).get("hidden_size")
    return int(value) if isinstance(value, int) else None


def test_embedding_shape_and_dimension(
    embedding_target: CompatTarget, hidden_size: int | None
) -> None:
    """One vector per input, all of the model's hidden size; usage counts the prompt."""
    verdict(
        embedding_target.identity, embeddings.shape_and_dimension(embedding_target, hidden_size)
    )


def test_single_input_equals_batch(embedding_target: CompatTarget) -> None:
    """A text embedded alone equals its vector inside a batch."""
    verdict(embedding_target.identity, embeddings.single_equals_batch(embedding_target))


def test_embeddings_are_deterministic(embedding_target: CompatTarget) -> None:
    """The same text twice gives the same vector."""
    verdict(embedding_target.identity, embeddings.deterministic(embedding_target))


def test_base64_equals_float(embedding_target: CompatTarget) -> None:
    """encoding_format base64 decodes to the float vector."""
    verdict(embedding_target.identity, embeddings.base64_equals_float(embedding_target))


def test_input_over_the_context_is_rejected(
    embedding_target: CompatTarget, max_context: int
) -> None:
    """An input longer than the context is a 4xx about the length; the server lives on."""
    verdict(
        embedding_target.identity, embeddings.over_context_rejected(embedding_target, max_context)
    )


def test_models_lists_the_pooling_model(embedding_target: CompatTarget) -> None:
    """/v1/models lists the served model."""
    verdict(embedding_target.identity, embeddings.models_list(embedding_target))
