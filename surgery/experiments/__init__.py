"""Edit experiments: one edit's effect on behaviour (`edit_eval`), the study's claim tested (`validate`), every
triple's effect (`atlas`): the functions are `surgery.edit_eval`, `surgery.validate`, `surgery.atlas`.

The names below are imported on first use, so the command line can read `surgery.experiments.settings`
(its flags) without loading torch. A function named like its module (`validate` in validate.py) is not
exported here: `surgery.experiments.validate` would be the function or the module depending on whether
something had imported the module before.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EditEvaluation": "edit_eval",
    "Target": "selection", "choose_targets": "selection",
    "EditOutcome": "validate", "Validation": "validate",
    "Atlas": "atlas", "AtlasSettings": "settings", "ValidateSettings": "settings",
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
