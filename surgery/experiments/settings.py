"""The settings of an atlas, as one typed record, and laser's defaults (importing this loads no torch: the CLI
builds its flags from it)."""
from __future__ import annotations

from dataclasses import dataclass, field

from surgery.names import CORRECTIONS, WEIGHTS

__all__ = ["AtlasSettings", "ATLAS_OPS", "ATLAS_DTYPES", "LASER_FRACTIONS", "LASER_WEIGHTS"]

ATLAS_OPS = ("zero", "constant", "scale")
"""zero: remove the triple. constant: the study's edit (the residual-facing vector set to value * ones).
scale: multiply the singular value by value (1.0 changes nothing: a null atlas)."""

ATLAS_DTYPES = ("float32", "bfloat16")

LASER_FRACTIONS = (0.02, 0.1, 0.25, 0.5, 0.75)
"""`laser`'s kept fractions of each weight's rank (LASER's most useful reductions keep 1-10%; 0.75 is a mild cut)."""
LASER_WEIGHTS = ("K", "V", "OV")


@dataclass(frozen=True)
class AtlasSettings:
    """What `atlas` edits, how many episodes it may spend on each edit, and how it decides.

    The same object is the parameter, the record stored with the results (resolved: every default
    replaced by what was used), the report's header, and the source of `surgery atlas`'s flags.
    Everything here except `embedding` changes which episodes run or what they return, so a
    results store made with other settings is refused rather than mixed.
    """

    weights: tuple[str, ...] = field(default=("K", "V", "OV"), metadata={"choices": WEIGHTS, "metavar": "W"})
    """Weights whose singular triples are edited, one at a time."""
    blocks: tuple[int, ...] | None = field(default=None, metadata={"metavar": "B"})
    """Blocks (default: all)."""
    heads: tuple[int, ...] | None = field(default=None, metadata={"metavar": "H"})
    """Heads of OV and QK (default: all)."""
    vectors: int | None = field(default=None, metadata={"metavar": "N", "positive": True})
    """Only each weight's first N singular triples (default: all)."""
    op: str = field(default="zero", metadata={"choices": ATLAS_OPS})
    """The edit applied to each triple: zero (remove it), constant (the study's edit), scale (singular value times
    --value)."""
    value: float | None = None
    """The op's value: the constant (default 1/d_model) or the scale factor (required)."""
    episodes: int = field(default=50, metadata={"metavar": "N", "positive": True})
    """Most paired episodes per edit (the last look); the baseline plays them all."""
    looks: tuple[float, ...] = field(default=(0.2, 0.5, 1.0), metadata={"metavar": "F"})
    """Fractions of --episodes at which each open edit is tested and may stop (the last must be 1)."""
    futility: float = 0.1
    """Stop an edit early when its conditional power to become significant falls below this (0: never)."""
    spend: float = 2.0
    """How the level is shared across looks: look k gets the increase of (fraction of episodes)^spend (Kim-DeMets
    power family; 2 keeps three quarters for the last of looks at 0.2, 0.5, 1)."""
    alpha: float = 0.05
    """Level of the final decisions after the correction across edits."""
    correction: str = field(default="holm", metadata={"choices": CORRECTIONS})
    """Correction across edits (surgery.stats.adjust_pvalues): holm controls the family-wise error."""
    seed: int = 0
    """Run seed: episode j of the baseline and of every edit is reset with a seed derived from (seed, j)."""
    target_return: float | None = None
    """Return-to-go to condition on (default: the metadata's first)."""
    max_steps: int | None = field(default=None, metadata={"metavar": "N", "positive": True})
    """Cut episodes at this many steps (default: the environment's limit)."""
    dtype: str = field(default="float32", metadata={"choices": ATLAS_DTYPES})
    """Precision of the forward (bfloat16: faster, actions differ slightly)."""
    lanes: int = field(default=64, metadata={"metavar": "N", "positive": True})
    """Episodes played together in one batched forward; also the size of one task (edits x episodes)."""
    embedding: str = "action_out"
    """Embedding set of the claim in the report's headline (Atlas.claim takes any)."""
