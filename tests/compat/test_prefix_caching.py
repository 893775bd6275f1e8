"""Prefix caching: greedy output identical without the cache (a fresh prefix) and with it (the
same prompt again), and the engine's hit counter rising on the repeat.

Runs where the server counts prefix-cache hits in /metrics (vLLM; on by default) and caching
is on; skips naming what is missing.
"""

from __future__ import annotations

from pytest_gpuinfer.compat import caching
from pytest_gpuinfer.compat.target import CompatTarget
from pytest_gpuinfer.plugin.compat_outcomes import judge, require


def test_prefix_cache_hit_gives_identical_output(compat_target: CompatTarget) -> None:
    """Output from the cache equals output without it; the hits counter rose."""
    require(caching.prefix_probe(compat_target.probe), identity=compat_target.identity)
    require(compat_target.probe.completions())
    judge(caching.prefix_cache_identical(compat_target.client, compat_target.model))
