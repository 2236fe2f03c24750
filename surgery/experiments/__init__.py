"""Edit experiments: one edit's effect on behaviour (`edit_eval`), the study's claim tested (`validate`), every
triple's effect (`atlas`).

The names below are imported on first use, so the command line can read `surgery.experiments.settings`
(its flags) without loading torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EditEvaluation": "edit_eval", "edit_eval": "edit_eval",
    "Target": "selection", "choose_targets": "selection",
    "EditOutcome": "validate", "Validation": "validate", "validate": "validate",
    "Atlas": "atlas", "atlas": "atlas", "AtlasSettings": "settings", "ValidateSettings": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'surgery.experiments' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"surgery.experiments.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
