"""What experiment reports share: the model's identity, number formats."""
from __future__ import annotations

import math
import os

from surgery.errors import SurgeryError, load_first


def adapter_with_metadata(model, what: str):
    """The adapter of a loaded decision transformer that carries its metadata (env, normalisation, return scale)."""
    from adapters import wrap

    if isinstance(model, (str, os.PathLike)):
        raise load_first(what, model)
    adapter = wrap(model)
    if getattr(adapter, "metadata", None) is None:
        raise SurgeryError("the model has no decision-transformer metadata (env_id, state mean/std, return scale, "
                           "context length): load it with surgery.load(..., metadata=...)")
    return adapter


def model_identity(adapter, source) -> dict:
    """What a report needs to say which model produced its numbers."""
    from surgery.behaviour.evaluation import weights_sha256

    md = adapter.metadata
    name = source if isinstance(source, (str, os.PathLike)) else type(adapter.model).__name__
    return {
        "model": str(name),
        "env_id": md.env_id,
        "weights_sha256": weights_sha256(adapter.model),
        "notes": md.notes or "",
        "untrained": "untrained" in (md.notes or "").lower(),
    }


def fmt(x: float | None, digits: int = 1) -> str:
    """A number for a table: fixed digits, 'inf' / '-' for the special values."""
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "never" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value to two significant digits."""
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 1e-300 else "<1e-300"
