"""Structured outputs: response_format json_schema and json_object, vLLM's guided regex, choice
and grammar, an invalid schema rejected with a 4xx, streamed equal to non-streamed.

Runs where the server takes response_format (probed); the guided options where it honours
vLLM's ``structured_outputs`` field (probed with a guided choice).
"""

from __future__ import annotations

import pytest

from pytest_gpuinfer.compat import reasoning, structured
from pytest_gpuinfer.compat.target import CompatTarget
from pytest_gpuinfer.plugin.compat_outcomes import excuse, judge, require, verdict


@pytest.fixture
def schema_target(compat_target: CompatTarget) -> CompatTarget:
    """The target, after the probe showed that it takes response_format json_schema."""
    require(structured.probe(compat_target.probe), identity=compat_target.identity)
    return compat_target


def test_json_schema_output_validates(schema_target: CompatTarget) -> None:
    """response_format json_schema: the answer parses and validates against the schema."""
    verdict(schema_target.identity, structured.json_schema_output(schema_target))


def test_json_object_output_is_an_object(compat_target: CompatTarget) -> None:
    """response_format json_object: the answer is a JSON object."""
    require(structured.json_object_probe(compat_target.probe), identity=compat_target.identity)
    verdict(compat_target.identity, structured.json_object_output(compat_target))


def test_invalid_schema_is_a_4xx(schema_target: CompatTarget) -> None:
    """An invalid JSON schema gets a 4xx, not a 500 or a hang; the server lives on."""
    verdict(schema_target.identity, structured.invalid_schema_rejected(schema_target))


def test_streamed_structured_output_equals_non_streamed(schema_target: CompatTarget) -> None:
    """The streamed json_schema answer equals the non-streamed one."""
    verdict(schema_target.identity, structured.streamed_equals_whole(schema_target))


@pytest.mark.parametrize("kind", list(structured.GUIDED))
def test_guided_output_is_what_it_allows(compat_target: CompatTarget, kind: str) -> None:
    """vLLM's guided regex, choice and grammar: the output is exactly what they allow."""
    require(structured.guided_probe(compat_target.probe), identity=compat_target.identity)
    verdict(compat_target.identity, structured.guided_output(compat_target, kind))


def test_guided_regex_on_completions(compat_target: CompatTarget) -> None:
    """vLLM's guided regex holds on /v1/completions too (no chat template, no thinking)."""
    require(structured.guided_probe(compat_target.probe), identity=compat_target.identity)
    require(compat_target.probe.completions())
    finding, evidence = structured.completions_guided(compat_target)
    if not finding.ok:
        evidence["reasoning"] = reasoning.probe(compat_target.probe).available
        excuse(compat_target.identity, "structured:completions regex", evidence)
    judge(finding)
