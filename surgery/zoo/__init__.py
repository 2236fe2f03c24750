"""The model zoo: decision transformers built here (experts, data, training) and shipped with the package.

Load a shipped model with `surgery.load("hopper")`; this package only builds them and says where they are.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["names", "resolve", "MODELS_DIR"]

MODELS_DIR = Path(__file__).parent / "models"


def names() -> list[str]:
    """Names of the shipped models (those with a checkpoint in surgery/zoo/models/)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def resolve(name: str) -> Path:
    """Directory of a shipped model; unknown names raise SurgeryError listing the valid ones."""
    from surgery.errors import SurgeryError

    if name in names():
        return MODELS_DIR / name
    raise SurgeryError(f"unknown zoo model {name!r}; valid names: {', '.join(names()) or '(none shipped)'}")
