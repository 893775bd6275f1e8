"""Tool calling: forced calls follow the tool's schema, streamed calls assemble, "none" calls
nothing, malformed tools get a 4xx, a tool-result turn is accepted.

Runs where the server takes tools (probed; vLLM needs --enable-auto-tool-choice and
--tool-call-parser, which ``--model builtin:qwen3`` sets), skips naming what is missing.
"""

from __future__ import annotations

import pytest

from pytest_gpuinfer.compat import tools
from pytest_gpuinfer.compat.target import CompatTarget
from pytest_gpuinfer.plugin.compat_outcomes import require, verdict


@pytest.fixture
def tool_target(compat_target: CompatTarget) -> CompatTarget:
    """The target, after the probe showed that it takes tools."""
    require(tools.probe(compat_target.probe), identity=compat_target.identity)
    return compat_target


def test_required_tool_call_follows_the_schema(tool_target: CompatTarget) -> None:
    """tool_choice "required": calls of offered tools whose arguments validate."""
    verdict(tool_target.identity, tools.forced_call(tool_target, "required"))


def test_named_tool_call_follows_the_schema(tool_target: CompatTarget) -> None:
    """tool_choice naming get_time: only get_time is called, with valid arguments."""
    verdict(tool_target.identity, tools.forced_call(tool_target, tools.NAMED))


def test_streamed_tool_call_equals_the_whole_call(tool_target: CompatTarget) -> None:
    """Streamed tool-call deltas assemble into the non-streamed calls."""
    verdict(tool_target.identity, tools.streamed_call(tool_target))


def test_tool_choice_none_calls_nothing(tool_target: CompatTarget) -> None:
    """tool_choice "none" answers with text and no tool call."""
    verdict(tool_target.identity, tools.choice_none(tool_target))


@pytest.mark.parametrize("case", list(tools.MALFORMED_TOOLS))
def test_malformed_tool_is_rejected(tool_target: CompatTarget, case: str) -> None:
    """A malformed tool definition gets a 4xx and the server stays healthy."""
    verdict(tool_target.identity, tools.malformed_rejected(tool_target, case))


def test_tool_result_turn_is_accepted(tool_target: CompatTarget) -> None:
    """An assistant tool call followed by its tool result is accepted and reaches the prompt."""
    verdict(tool_target.identity, tools.tool_result_turn(tool_target))
