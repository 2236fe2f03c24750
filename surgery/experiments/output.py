"""What experiment reports share: the model's identity, number formats."""
from __future__ import annotations

import math
import os
from contextlib import contextmanager

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


def model_identity(adapter, source, edits=None) -> dict:
    """What a report needs to say which model produced its numbers.

    edits: the saved patch (`SavedPatch`) the run applied to the model first, if any: named in the
    model's name and recorded (folder, manifest SHA-256, the edits), since the weights hashed are the edited ones.
    """
    from surgery.behaviour.evaluation import weights_sha256

    md = adapter.metadata
    name = str(source) if isinstance(source, (str, os.PathLike)) else type(adapter.model).__name__
    identity = {
        "model": name,
        "env_id": md.env_id,
        "weights_sha256": weights_sha256(adapter.model),
        "notes": md.notes or "",
        "untrained": "untrained" in (md.notes or "").lower(),
    }
    if edits is not None:
        from surgery.experiments.edits import label

        identity["model"] = f"{name} + edits {edits.path.name}"
        identity["edits"] = {"folder": str(edits.path), "manifest_sha256": edits.digest,
                             "edits": [label(e) for e in edits.edits]}
    return identity


@contextmanager
def saved_edits_applied(adapter, edits):
    """Apply the saved patch `edits` (a folder `Patch.save` wrote, or a loaded `SavedPatch`) for the `with`
    body and yield it; yield None when `edits` is None. The weights are restored bitwise on the way out."""
    if edits is None:
        yield None
        return
    from surgery.core.saved import SavedPatch, load_patch

    patch = edits if isinstance(edits, SavedPatch) else load_patch(edits, adapter)
    if patch.adapter.model is not adapter.model:
        raise SurgeryError("edits= is a patch loaded for another model object than this one")
    with patch:
        yield patch


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
