"""The model zoo: decision transformers built here (experts, data, training) and shipped with the package."""
from __future__ import annotations

from pathlib import Path

from surgery.zoo.metadata import DTMetadata

__all__ = ["names", "resolve", "load_checkpoint", "DTMetadata"]

MODELS_DIR = Path(__file__).parent / "models"


def names() -> list[str]:
    """Names of the shipped models (those with a checkpoint in surgery/zoo/models/)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / "config.json").is_file())


def resolve(name: str) -> Path:
    """Directory of a shipped model; unknown names raise ValueError listing the valid ones."""
    if name in names():
        return MODELS_DIR / name
    raise ValueError(f"unknown zoo model {name!r}; valid names: {', '.join(names()) or '(none shipped)'}")


def load_checkpoint(path, metadata=None):
    """Load a HF decision-transformer checkpoint directory: (model in eval mode, DTMetadata). See checkpoint.py."""
    from surgery.zoo.checkpoint import load_checkpoint as _load  # torch/transformers only when needed

    return _load(path, metadata)
