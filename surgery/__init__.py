"""SVD interpretability and reversible singular-vector surgery on transformers.

The public names are imported on first use, so `surgery --help` starts fast and the command line
can configure threading before torch is loaded.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Adapter": "adapters", "register": "adapters", "supported": "adapters", "wrap": "adapters",
    "SVD": "surgery.decomposition", "decompose": "surgery.decomposition",
    "Edit": "surgery.patching", "Patch": "surgery.patching", "patch": "surgery.patching",
    "load": "surgery.loading",
    "alignment": "surgery.align", "locate": "surgery.localisation",
    "EvalResult": "surgery.evaluation", "evaluate": "surgery.evaluation", "evaluate_pair": "surgery.evaluation",
}
_MODULES = ("stats",)

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"surgery.{name}")
    else:
        raise AttributeError(f"module 'surgery' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return __all__
