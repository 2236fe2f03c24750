"""SVD interpretability and reversible singular-vector surgery on transformers."""
from adapters import Adapter, register, supported, wrap
from surgery.decomposition import SVD, decompose
from surgery.loading import load
from surgery.patching import Edit, Patch, patch

__all__ = ["Adapter", "Edit", "Patch", "SVD", "decompose", "load", "patch", "register", "supported", "wrap"]
