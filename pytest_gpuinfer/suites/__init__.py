"""The suites users run against their stacks, shipped in the wheel (from tests/ in a checkout).

``pytest --pyargs pytest_gpuinfer.suites.compat --endpoint URL`` (or ``gpuinfer compat --endpoint
URL``) runs one from any directory. Each name below is a package mapped from ``tests/<name>``.
"""

SUITES: tuple[str, ...] = ("compat", "perf", "load", "memory", "batch", "docker", "faults")
"""Every shipped suite, in the order ``gpuinfer all`` runs them."""
