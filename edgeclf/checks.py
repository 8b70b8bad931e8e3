"""Numeric settings checked at the boundary: finite and inside a stated range, or one clear line.

NaN compares false with everything, so `x <= 0` lets it through; every bound here is checked
as "inside", never as "not outside".
"""
from __future__ import annotations

import math

from edgeclf.errors import UsageError


def check_range(option: str, value, low=None, high=None, *, low_open: bool = False, example: str = ""):
    """Return `value` if it is a finite number within [low, high] (or (low, high]); else raise naming both."""
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    inside = inside and (low is None or (value > low if low_open else value >= low))
    inside = inside and (high is None or value <= high)
    if not inside:
        kind = "a finite number" if isinstance(value, float) else "a whole number"
        raise UsageError(f"{option} {value} must be {kind} {describe(low, high, low_open)}", f"e.g. {example}" if example else None)
    return value


def describe(low, high, low_open: bool = False) -> str:
    if high is None:
        return f"{'above' if low_open else 'of at least'} {_number(low)}"
    return f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}]"


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
