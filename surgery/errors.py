"""The one error type of the library: a mistake in what the user asked for, stated with what would be valid.

`SurgeryError` subclasses `ValueError`, so code written against the earlier `ValueError`s still
catches it. The command line reports a `SurgeryError` (or a missing file) as one line and exit
status 2; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["SurgeryError", "load_first"]


class SurgeryError(ValueError):
    """Bad input: an unknown name, an index out of range, a file that is not what it claims to be."""


def load_first(what: str, value) -> SurgeryError:
    """The error for a model given by name or path where a loaded model is needed."""
    return SurgeryError(f"{what} takes a loaded model, got the {type(value).__name__} {str(value)!r}: "
                        f"load it first: model = surgery.load({str(value)!r})")
