"""The report's JSON Schema (schema.json, shipped with the package) and validation against it."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from pytest_gpuinfer.report.collector import SCHEMA_ID, SCHEMA_VERSION


class SchemaProblem(ValueError):
    """A document that is not a valid pytest-gpuinfer report (the message says where)."""


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema of the report (draft 2020-12)."""
    text = resources.files("pytest_gpuinfer.report").joinpath("schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def validate(document: Any) -> None:
    """Raise SchemaProblem unless ``document`` is a report of a schema version we can read.

    Uses the ``jsonschema`` package (extra ``report``) for the full check; without it only the
    schema name and major version are checked.
    """
    if not isinstance(document, dict) or document.get("schema") != SCHEMA_ID:
        raise SchemaProblem(f"not a {SCHEMA_ID} document (no 'schema': '{SCHEMA_ID}')")
    version = str(document.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise SchemaProblem(
            f"schema version {version!r}; this pytest-gpuinfer reads "
            f"{SCHEMA_VERSION.split('.')[0]}.x"
        )
    try:
        import jsonschema
    except ImportError:
        return
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        shown = "; ".join(
            f"at /{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors[:5]
        )
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise SchemaProblem(f"{len(errors)} schema errors: {shown}{more}")
