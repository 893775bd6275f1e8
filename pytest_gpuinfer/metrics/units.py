"""How each metric family is written for people: latencies in ms, fractions in %, rates per s."""

from __future__ import annotations

import math

LATENCY = "latency"
FRACTION = "fraction"
REQUEST_RATE = "request rate"
TOKEN_RATE = "token rate"


def ms(seconds: float, digits: int = 2) -> str:
    """Seconds as a millisecond figure without unit (a table cell), '-' for no value."""
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.{digits}f}"


def percent(fraction: float, digits: int = 2) -> str:
    """A fraction as a percentage with its sign, '-' for no value."""
    return "-" if math.isnan(fraction) else f"{fraction * 100.0:.{digits}f}%"


def short_number(x: float) -> str:
    """A number with one decimal when large, four significant digits when small."""
    if x == 0 or abs(x) >= 100:
        text = f"{x:.1f}"
        return text[:-2] if text.endswith(".0") else text
    return f"{x:.4g}"


def with_unit(family: str, value: float) -> str:
    """A value in the unit people read for its family: '612.3 ms', '0.5%', '41.2 req/s'."""
    if math.isnan(value):
        return "n/a"
    if family == LATENCY:
        return f"{short_number(value * 1e3)} ms"
    if family == FRACTION:
        return f"{short_number(value * 100.0)}%"
    return f"{short_number(value)} {'req/s' if family == REQUEST_RATE else 'tok/s'}"
