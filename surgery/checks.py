"""Argument checks every public function shares: one SurgeryError that names the argument, what it got and what is valid.

Why one module: a number handed to the wrong place should fail where it enters, not three calls
deeper as a TypeError from numpy or an infinite loop (alpha=0 in a search for enough pairs).
Integers from numpy or torch (a block read out of an analysis table) count as integers.
"""
from __future__ import annotations

import math
import numbers

from surgery.errors import SurgeryError

__all__ = ["integer", "level", "positive_number", "one_of", "scalar"]


def scalar(value):
    """A 0-d numpy or torch value as the Python number it holds; anything else unchanged (for the checks to judge)."""
    if hasattr(value, "ndim") and getattr(value, "ndim") == 0 and hasattr(value, "item"):
        return value.item()
    return value


def integer(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """`value` as a Python int within [low, high] (either bound optional); numpy and 0-d torch integers count."""
    value = scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SurgeryError(f"{name} must be an integer{_range(low, high)}, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise SurgeryError(f"{name}={value} is out of range{_range(low, high)}")
    return value


def level(value, name: str = "alpha") -> float:
    """A probability strictly between 0 and 1 (a significance level, a confidence, a futility bound)."""
    x = _real(value, name, "a number strictly between 0 and 1")
    if not 0.0 < x < 1.0:
        raise SurgeryError(f"{name}={value!r} must be strictly between 0 and 1")
    return x


def positive_number(value, name: str) -> float:
    """A finite real number above 0."""
    x = _real(value, name, "a finite number above 0")
    if not (math.isfinite(x) and x > 0):
        raise SurgeryError(f"{name}={value!r} must be a finite number above 0")
    return x


def one_of(value, name: str, valid) -> object:
    """`value` if it is one of `valid`, else an error listing them."""
    if value not in valid:
        raise SurgeryError(f"{name}={value!r} is not known; valid: {', '.join(map(repr, valid))}")
    return value


def _real(value, name: str, what: str) -> float:
    value = scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SurgeryError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    x = float(value)
    if math.isnan(x):
        raise SurgeryError(f"{name} must be {what}, got nan")
    return x


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f" (valid: {low}..{high})"
    if low is not None:
        return f" (valid: {low} or more)"
    if high is not None:
        return f" (valid: at most {high})"
    return ""
