"""What the core remembers about each model while it works on it: the lock, the patch stack, cached SVDs.

Kept here, keyed weakly by the model object, so an adapter stays a pure map of an architecture:
wrapping the same model twice gives two adapters but one state, and the state goes when the model does.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

__all__ = ["ModelState", "state"]


@dataclass
class ModelState:
    """Mutable per-model state shared by every patch and decomposition of that model."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    """Held while patches are applied: one thread at a time edits a model."""
    patch_stack: list = field(default_factory=list)
    """Applied patches, oldest first (they revert last-in-first-out)."""
    svd_cache: dict = field(default_factory=dict)
    """(block, weight, fold_ln, dtype[, method, k]) -> (version stamp of the source tensors, SVD)."""
    version_aliases: dict = field(default_factory=dict)
    """(tensor id, version after a bitwise restore) -> the earlier version whose contents it has again."""
    scratch: dict = field(default_factory=dict)
    """(shape, dtype, device) -> spare buffers patches save weights into (clear() to free the memory)."""


_STATES: "weakref.WeakKeyDictionary[object, ModelState]" = weakref.WeakKeyDictionary()
_CREATE = threading.Lock()


def state(model) -> ModelState:
    """The state of a model (an nn.Module, or an adapter: its `.model`), created on first use."""
    module = getattr(model, "model", model)
    with _CREATE:  # two threads asking at once must get the same lock
        s = _STATES.get(module)
        if s is None:
            s = _STATES[module] = ModelState()
    return s
