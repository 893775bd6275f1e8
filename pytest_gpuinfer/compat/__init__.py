"""Compat checks by feature family, returning findings instead of pytest outcomes.

``findings`` (what a check learns), ``probe`` (what a server offers, probed once),
``capabilities`` (all probes at once, for the run header), ``deviations`` (documented engine
behaviour), ``calls`` (requests and how answers are read), ``tokens`` (token counts and
exact-length prompts), ``target`` (the server as the checks see it), and one module per
feature family: ``tools``, ``structured``, ``reasoning``, ``embeddings``, ``adapters``,
``caching``; ``offline`` runs engine subprocesses beside the server. The plugin layer
(``pytest_gpuinfer.plugin.compat_outcomes``) turns findings into pass, xfail, skip or fail.
"""
