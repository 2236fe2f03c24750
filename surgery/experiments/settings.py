"""The settings of an atlas and of a validation, each as one typed record, and laser's defaults (importing this
loads no torch: the CLI builds its flags from it)."""
from __future__ import annotations

from dataclasses import dataclass, field

from surgery.checks import integer, level, one_of
from surgery.errors import SurgeryError
from surgery.names import CORRECTIONS, REMOVAL_OPS, WEIGHTS

__all__ = ["AtlasSettings", "ATLAS_OPS", "ATLAS_DTYPES", "ValidateSettings", "VALIDATE_CORRECTIONS", "LASER_FRACTIONS",
           "LASER_WEIGHTS"]

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
    """Most episodes per edit (the last look); paired, the baseline plays them all too (with --pool, none)."""
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
    pool: int = field(default=0, metadata={"metavar": "N", "nonnegative": True})
    """Judge every edit against N unedited episodes on seeds no edit plays, unpaired, instead of pairing it with
    the baseline's episode on its own seed: for environments whose episodes do not repeat under a small change
    (a paired atlas's placebo says; docs/atlas.md#placebo). 0: paired."""
    embedding: str = "action_out"
    """Embedding set of the claim in the report's headline (Atlas.claim takes any)."""


VALIDATE_CORRECTIONS = ("holm", "bh")
"""holm: family-wise error across a validation's edits; bh: Benjamini-Hochberg false discovery rate."""


@dataclass(frozen=True)
class ValidateSettings:
    """What `validate` edits, how many episodes it plays, and how it decides.

    The same object is the parameter, the record stored with the results (resolved: `value` and
    `target_return` replaced by what was used), the report's header, and the source of `surgery validate`'s
    flags. A bad value is refused when the record is made; what needs the model (the embedding set,
    target_return) is checked by the run.
    """

    embedding: str = "action_out"
    """Embedding set the aligned vectors are aligned with."""
    top: int = field(default=5, metadata={"positive": True})
    """Aligned vectors to edit: at most this many, those aligned beyond chance (if none is, the top-ranked)."""
    controls: int | None = field(default=None, metadata={"nonnegative": True})
    """Controls of each kind, same weight and other weight (default: one per aligned vector)."""
    weights: tuple[str, ...] | None = field(default=None, metadata={"choices": WEIGHTS, "metavar": "W"})
    """Take the aligned vectors from these weights only, e.g. K for the study's claim about K vectors (default:
    any weight)"""  # no full stop: the flag's help goes on with "; choices: ..."
    op: str = field(default="constant", metadata={"choices": REMOVAL_OPS})
    """constant: the study's edit (the vector set to value * ones); zero: remove the triple."""
    value: float | None = None
    """The constant (op constant only; default 1/d_model)."""
    seed: int = field(default=0, metadata={"nonnegative": True})
    """Run seed: episode i is reset with a seed derived from (seed, i), so every run with this seed faces the same
    initial states."""
    target_return: float | None = None
    """Return-to-go to condition on (default: the metadata's first)."""
    dtype: str = field(default="float32", metadata={"choices": ATLAS_DTYPES})
    """Precision of the forward (bfloat16: faster, actions differ slightly)."""
    max_steps: int | None = field(default=None, metadata={"positive": True})
    """Cut episodes at this many steps (default: the environment's limit)."""
    alpha: float = 0.05
    """Significance level: of the aligned vectors' selection (surgery.locate) and of the corrected tests."""
    correction: str = field(default="holm", metadata={"choices": VALIDATE_CORRECTIONS})
    """Multiple-comparison correction across edits: holm (family-wise) or bh (false discovery rate)."""
    episodes: int = 200
    """Paired episodes per run (the baseline's and every edit's), at least 2."""

    def __post_init__(self):
        w = self.weights
        if w is not None and not isinstance(w, tuple):  # "K", or a list (as JSON stores it): the record stays hashable
            object.__setattr__(self, "weights", (w,) if isinstance(w, str) else tuple(w))
        for name, low in (("top", 1), ("controls", 0), ("seed", 0), ("max_steps", 1), ("episodes", 2)):
            value = getattr(self, name)
            if value is not None or name not in ("controls", "max_steps"):  # those two: None means the default
                object.__setattr__(self, name, integer(value, name, low=low))  # a numpy integer becomes an int
        unknown = [w for w in self.weights or () if w not in WEIGHTS]
        if unknown or self.weights == ():
            what = f"{unknown} not known" if unknown else "name at least one"
            raise SurgeryError(f"weights={list(self.weights)!r}: {what}; valid: {', '.join(WEIGHTS)}")
        if self.op not in REMOVAL_OPS:
            raise SurgeryError(f"op={self.op!r} is not a validate edit; valid: {', '.join(map(repr, REMOVAL_OPS))}")
        if self.op == "zero" and self.value is not None:
            raise SurgeryError("op='zero' takes no value")
        one_of(self.dtype, "dtype", ATLAS_DTYPES)
        level(self.alpha)
        one_of(self.correction, "correction", VALIDATE_CORRECTIONS)
