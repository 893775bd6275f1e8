"""What a server offers, probed once when a run first talks to it, and said in one line.

Checks never assume vLLM: each optional thing (a health route, a context length in
``/v1/models``, a tokenize route under one of its names, ``/metrics``, ``/version``, usage in
streams, ``n``, logprobs, tool calls, structured outputs, reasoning, embeddings, LoRA adapters,
prefix caching, speculative decoding) is a :class:`~pytest_gpuinfer.compat.findings.Feature`
that a check requires, so it runs, skips naming the missing capability, or fails when the probe
found it broken. This module probes them all at once so the run can say up front what the
server offers and what it lacks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_gpuinfer.compat import (
    adapters,
    caching,
    embeddings,
    reasoning,
    structured,
    tools,
)
from pytest_gpuinfer.compat.findings import Feature
from pytest_gpuinfer.compat.probe import ServerProbe

if TYPE_CHECKING:
    from pytest_gpuinfer.targets.base import InferenceServer

CAPABILITY_PROBES: tuple[tuple[str, Callable[[ServerProbe], Feature]], ...] = (
    ("/health", ServerProbe.health_route),
    ("context length in /v1/models", ServerProbe.context_length),
    ("tokenize route", ServerProbe.tokenize_route),
    ("detokenize route", ServerProbe.detokenize_route),
    ("/metrics", ServerProbe.metrics_route),
    ("/version", ServerProbe.version_route),
    ("usage in streams", ServerProbe.stream_usage),
    ("n", ServerProbe.n_choices),
    ("completion logprobs", ServerProbe.completion_logprobs),
    ("chat logprobs", ServerProbe.chat_logprobs),
    ("tool calls", tools.probe),
    ("structured outputs", structured.probe),
    ("JSON mode", structured.json_object_probe),
    ("guided decoding (structured_outputs)", structured.guided_probe),
    ("reasoning", reasoning.probe),
    ("embeddings", embeddings.probe),
    ("LoRA adapters", adapters.probe),
    ("runtime LoRA loading", adapters.runtime_probe),
    ("prefix caching", caching.prefix_probe),
    ("speculative decoding", caching.speculative_probe),
)
"""Every capability the run header reports, in the order it lists them."""


@dataclass(frozen=True)
class Capabilities:
    """The probed capabilities of one server."""

    base_url: str
    features: tuple[tuple[str, Feature], ...]
    context_note: str | None = None
    """Where the context length comes from when /v1/models does not say (a launch setting)."""

    def offered(self) -> list[str]:
        """Names of the capabilities the server has (with the tokenize dialect spelled out)."""
        return [name for name, feature in self.features if feature.available]

    def missing(self) -> list[str]:
        """Names of the capabilities the server lacks or that are broken."""
        return [
            f"{name} (broken)" if feature.broken else name
            for name, feature in self.features
            if not feature.available
        ]

    def line(self) -> str:
        """One line for the run's header: what is offered, what is not."""
        offered = ", ".join(self.offered()) or "none of the optional ones"
        text = f"capabilities of {self.base_url}: offers {offered}"
        missing = self.missing()
        if missing:
            text += f"; lacks {', '.join(missing)}"
        if self.context_note:
            text += f"; {self.context_note}"
        return text


_FOUND: dict[str, Capabilities] = {}
_LOCK = threading.Lock()


def probe_capabilities(server: InferenceServer, probe: ServerProbe) -> Capabilities:
    """Probe every capability of ``server`` once (cached per base URL) and remember the answer."""
    with _LOCK:
        known = _FOUND.get(server.base_url)
    if known is not None:
        return known
    features = tuple((name, run(probe)) for name, run in CAPABILITY_PROBES)
    note = None
    context = dict(features)["context length in /v1/models"]
    if not context.available and server.max_model_len is not None:
        note = f"context length {server.max_model_len} as set by this run's launch"
    dialect = probe.tokenize_dialect()
    if dialect is not None:
        features = tuple(
            (f"{name} ({dialect.tokenize_path}, {dialect.name})", feature)
            if name == "tokenize route"
            else (name, feature)
            for name, feature in features
        )
    found = Capabilities(server.base_url, features, note)
    with _LOCK:
        return _FOUND.setdefault(server.base_url, found)


def recorded(server: InferenceServer) -> Capabilities | None:
    """The capabilities probed for ``server`` in this run, or None when nothing probed them."""
    with _LOCK:
        return _FOUND.get(server.base_url)
