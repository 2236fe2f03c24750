"""SVD interpretability and reversible singular-vector surgery on transformers.

    model = surgery.load("hopper")                       # the one door: zoo name, checkpoint dir, or model
    U, S, V = surgery.decompose(model, block=1, weight="K")
    with surgery.patch(model, block=1, weight="K", idx=0): ...
    surgery.Patch(model, edits).save("edit/"); p = surgery.load_patch("edit/", model)   # edits as files

The package is layered (imports run down only): `adapters` (architecture maps) < `surgery.core`
(decompositions, patches) < `surgery.analysis` (alignment, chance, reports) < `surgery.behaviour`
(rollouts, environments, results) < `surgery.zoo` (the shipped models, building them) <
`surgery.loading` < `surgery.lm`, `surgery.experiments` < `surgery.export` < `surgery.cli`. The
public names below are imported on first use, so `surgery --help` starts fast and the command line
can configure threading before torch is loaded.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Adapter": "adapters", "register": "adapters", "supported": "adapters", "wrap": "adapters",
    "SVD": "surgery.core.decomposition", "decompose": "surgery.core.decomposition",
    "Edit": "surgery.core.patching", "Patch": "surgery.core.patching", "patch": "surgery.core.patching",
    "load_patch": "surgery.core.saved",
    "load": "surgery.loading",
    "alignment": "surgery.analysis.alignment", "locate": "surgery.analysis.localisation",
    "EvalResult": "surgery.behaviour.evaluation", "evaluate": "surgery.behaviour.evaluation",
    "evaluate_pair": "surgery.behaviour.evaluation",
    "atlas": "surgery.experiments.atlas", "Atlas": "surgery.experiments.atlas",
    "edit_eval": "surgery.experiments.edit_eval", "validate": "surgery.experiments.validate",
    "AtlasSettings": "surgery.experiments.settings", "ValidateSettings": "surgery.experiments.settings",
    "SurgeryError": "surgery.errors",
}
_MODULES = ("stats",)

__all__ = sorted([*_EXPORTS, *_MODULES])

if TYPE_CHECKING:  # what editors and type checkers see through the lazy exports below
    from adapters import Adapter, register, supported, wrap
    from surgery import stats
    from surgery.analysis.alignment import alignment
    from surgery.analysis.localisation import locate
    from surgery.behaviour.evaluation import EvalResult, evaluate, evaluate_pair
    from surgery.core.decomposition import SVD, decompose
    from surgery.core.patching import Edit, Patch, patch
    from surgery.core.saved import load_patch
    from surgery.errors import SurgeryError
    from surgery.experiments.atlas import Atlas, atlas
    from surgery.experiments.edit_eval import edit_eval
    from surgery.experiments.settings import AtlasSettings, ValidateSettings
    from surgery.experiments.validate import validate
    from surgery.loading import load


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
