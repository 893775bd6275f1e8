"""pytest-gpuinfer: is this LLM inference stack fit to serve? (PYTEST_DONT_REWRITE)

The marker in parentheses keeps pytest from warning that this package was imported before it
could rewrite it (the ``gpuinfer`` command imports it first); the plugin's own modules are still
rewritten as usual.
"""

__version__ = "0.2.0"
"""The version, declared once: pyproject.toml reads it from here."""
