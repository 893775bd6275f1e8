"""Repository-wide test configuration: hypothesis profiles (pick one with HYPOTHESIS_PROFILE)."""

from __future__ import annotations

import os

from pytest_gpuinfer.plugin.ci import in_ci

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev extra; the plugin itself does not need it
    pass
else:
    settings.register_profile(
        "ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile("dev", max_examples=100, deadline=None)
    settings.register_profile("thorough", max_examples=1000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if in_ci() else "dev"))
