"""SVD interpretability and reversible singular-vector surgery on transformers."""
from adapters import Adapter, register, supported, wrap
from surgery import stats
from surgery.decomposition import SVD, decompose
from surgery.evaluation import EvalResult, evaluate, evaluate_pair
from surgery.loading import load
from surgery.patching import Edit, Patch, patch

__all__ = ["Adapter", "Edit", "EvalResult", "Patch", "SVD", "decompose", "evaluate", "evaluate_pair", "load",
           "patch", "register", "stats", "supported", "wrap"]
