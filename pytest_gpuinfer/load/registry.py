"""Things registered by name (schedules, workloads) and built from a short text form.

The text form is ``"name:key=value,key=value"``, e.g. ``"poisson:rate=4,seed=1"`` or
``"dataset:path=chats.json,format=sharegpt"``: what the command line, the locustfile's
environment and pytest options can carry. Values are converted by the type each dataclass field
is annotated with (``int``, ``float``, ``bool``, ``str``, an optional ``None``, and
``tuple[float, float]`` written ``start:end``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_WORD = re.compile(r"[A-Za-z_]+")


class Registry(Generic[T]):
    """Classes by name, with a decorator to add one and a builder from the text form."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: make ``cls`` known as ``name``."""

        def add(cls: type[T]) -> type[T]:
            """Record ``cls`` under the name and return it unchanged."""
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name`` (ValueError naming the known ones otherwise)."""
        try:
            return self._classes[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def from_text(self, text: str) -> T:
        """Build an object from ``"name:key=value,..."`` (ValueError with the cause otherwise)."""
        name, _, rest = text.strip().partition(":")
        cls = self.get(name.strip())
        params = parse_params(rest, f"{self.kind} {name!r}")
        return build(cls, params, f"{self.kind} {name!r}")


def parse_params(text: str, where: str) -> dict[str, str]:
    """``key=value,key=value`` as a dict of strings."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{where}: {part!r} is not key=value")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def build(cls: type[T], params: dict[str, str], where: str) -> T:
    """An instance of the dataclass ``cls`` from string parameters, converted by field type."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {unknown}; known: {sorted(fields)}")
    values: dict[str, Any] = {}
    for key, raw in params.items():
        try:
            values[key] = convert(raw, str(fields[key].type))
        except ValueError as exc:
            raise ValueError(f"{where}: {key}={raw!r}: {exc}") from None
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def convert(raw: str, annotation: str) -> Any:
    """``raw`` as the type an annotation names (its first of bool, int, float, tuple; else str)."""
    words = set(_WORD.findall(annotation))
    if "None" in words and raw.lower() in ("none", ""):
        return None
    if "bool" in words:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("not a boolean (true/false)")
    if "tuple" in words:
        return tuple(float(part) for part in raw.split(":"))
    if "int" in words and "float" not in words:
        return int(raw)
    if "float" in words:
        return float(raw)
    return raw
