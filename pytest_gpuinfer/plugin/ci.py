"""Whether this run is a CI run: one answer for the plugin and the suites.

CI runs the suites' short versions (fewer requests, shorter bursts, smaller search ranges). It is
read from the ``CI`` environment variable, which GitHub Actions and most CI systems set to
``true``; ``false``, ``0``, ``no``, ``off`` or empty is not CI (the GPU workflow sets
``CI=false`` for its full-size runs), and any other value is an error rather than a guess.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``CI`` says this is a CI run (case-insensitive); unset is not CI."""
    value = (os.environ if environ is None else environ).get("CI", "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"CI={value!r}: expected one of {', '.join(TRUE + FALSE[1:])} (or unset)")
