"""The settings of an alignment analysis, as one typed record (importing it loads no torch: the CLI reads it)."""
from __future__ import annotations

from dataclasses import dataclass, field

from surgery.names import CORRECTIONS, METHODS, SIDES, WEIGHTS

__all__ = ["AlignmentSettings", "FAMILIES", "NOISE"]

NOISE = {"K": 0.028, "V": 0.029, "OV": 0.076, "QK": 0.058}
"""Default ||E||_2 / S_0 per weight type for tied singular values (surgery.analysis.subspaces): the largest
difference measured between two 1000-step continuations of the shipped Hopper's and LunarLander's training that
differ only in minibatch noise, over every block (scripts/tie_calibration.py; docs/analysis.md, "Tied singular
values"). A lower bound on what retraining from scratch would change."""

FAMILIES = ("set", "all")
"""set: correct within each embedding set (the question "where is this embedding?"); all: over every set at once."""


@dataclass(frozen=True)
class AlignmentSettings:
    """What `alignment` compares and how it scores against chance.

    The same object is the parameter, the record stored with the results (resolved: every default
    replaced by what was used), the report's header, and the source of `surgery analyze`'s flags.
    """

    embeddings: tuple[str, ...] | None = field(default=None, metadata={"metavar": "SET"})
    """Embedding sets to compare with (default: every set the model has)."""
    weights: tuple[str, ...] = field(default=WEIGHTS, metadata={"choices": WEIGHTS, "metavar": "W"})
    """Weights whose residual-facing singular vectors are searched."""
    blocks: tuple[int, ...] | None = field(default=None, metadata={"metavar": "B", "nonnegative": True})
    """Blocks (default: all)."""
    heads: tuple[int, ...] | None = field(default=None, metadata={"metavar": "H", "nonnegative": True})
    """Heads of OV and QK (default: all)."""
    vectors: int | None = field(default=None, metadata={"metavar": "N", "positive": True})
    """Only each weight's first N singular vectors (in Python also explicit indices or a slice; default: all)."""
    top: int = field(default=10, metadata={"metavar": "K", "positive": True})
    """Labels kept at each end (most positive and most negative cosines) per singular vector."""
    fold_ln: bool = False
    """Fold the preceding LayerNorm gain into the read side (analysis only; patches edit the stored weight)."""
    sides: str | None = field(default=None, metadata={"choices": SIDES})
    """Keep only this residual-facing side (default: both where both face the residual stream)."""
    dtype: str | None = field(default=None, metadata={"choices": ("float32", "float64")})
    """Precision of SVDs and cosines (default: float64 for DT-sized problems -- d_model <= 256 and at most
    20,000 labels -- else float32)."""
    method: str | None = field(default=None, metadata={"choices": METHODS})
    """SVD route passed to surgery.decompose (gram: faster for wide models; default exact)."""
    draws: int | None = field(default=None, metadata={"metavar": "N", "positive": True})
    """Monte Carlo random directions per embedding set (default: by the set's size)."""
    seed: int = field(default=0, metadata={"nonnegative": True})
    """Seed of the random directions."""
    correction: str = field(default="holm", metadata={"choices": CORRECTIONS})
    """Multiple-comparison correction (surgery.stats.adjust_pvalues)."""
    family: str = field(default="set", metadata={"choices": FAMILIES})
    """Correct within each embedding set ("set") or over all sets together ("all")."""
    alpha: float = 0.05
    """Significance level after the correction."""
    noise: float | None = field(default=None, metadata={"metavar": "X"})
    """Size ||E||_2 / S_0 of the weight perturbation a singular vector must survive to count as identifiable
    (surgery.analysis.subspaces). Neighbours of an m x n weight closer than noise / (0.5 (sqrt m + sqrt n)) S_0
    are tied; 0 ties only equal singular values. Default: measured retraining noise per weight type (NOISE)."""
