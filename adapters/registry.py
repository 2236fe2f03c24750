"""Which adapter wraps which model: a registry that third parties extend with `@register`."""
from __future__ import annotations

import os
import weakref
from importlib.metadata import entry_points

from adapters.base import Adapter
from surgery.errors import load_first

ENTRY_POINT_GROUP = "svd_surgery.adapters"

_ADAPTERS: list[type[Adapter]] = []
_WRAPPED: "weakref.WeakKeyDictionary[object, Adapter]" = weakref.WeakKeyDictionary()
_plugins_loaded = False


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make `wrap` use this adapter for the models it `matches`.

    Later registrations win, so a plug-in can override a built-in adapter.
    """
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"register expects an Adapter subclass, got {cls!r}")
    _ADAPTERS.insert(0, cls)
    return cls


def _load_plugins() -> None:
    """Import the modules named in the `svd_surgery.adapters` entry-point group (they call register)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def supported() -> list[str]:
    """Names of the model classes some registered adapter wraps."""
    _load_plugins()
    return sorted({name for cls in _ADAPTERS for name in cls.model_classes})


def wrap(model) -> Adapter:
    """The adapter for a model object; the same adapter every time for the same object (and its metadata)."""
    if isinstance(model, Adapter):
        return model
    if isinstance(model, (str, os.PathLike)):
        raise load_first("this function", model)
    try:
        return _WRAPPED[model]
    except (KeyError, TypeError):
        pass
    _load_plugins()
    for cls in _ADAPTERS:
        if cls.matches(model):
            adapter = cls(model)
            _WRAPPED[model] = adapter
            return adapter
    raise TypeError(
        f"no adapter for a {type(model).__name__}; supported model classes: {', '.join(supported())}. "
        "Register one with @adapters.register (see adapters/base.py for the interface)."
    )
