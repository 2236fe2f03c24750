"""Which singular vectors `validate` edits: the most aligned with an embedding, and matched controls.

Controls are matched on the share of the weight's energy the triple carries, S_i^2 / sum_j S_j^2:
any edit that removes a triple changes the weight by about S_i, so without the match a control
would differ from its aligned vector in size as well as in alignment. The share is scale-free,
so it also compares triples of different weights (a K triple with an OV triple).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from surgery.core.decomposition import decompose
from surgery.core.patching import Edit
from surgery.errors import SurgeryError

GROUPS = ("aligned", "control_same", "control_other")
"""aligned: ranked most aligned by surgery.locate. control_same: same block, weight (and head,
side), unaligned. control_other: a different weight type, unaligned (same block where possible)."""


@dataclass(frozen=True)
class Target:
    """One singular vector chosen for editing, with what `locate` said about it."""

    group: str
    block: int
    weight: str
    head: int | None
    side: str
    idx: int
    label: str
    """Its best-matching embedding label."""
    cos: float
    abs_cos: float
    p_adj: float
    """Chance-corrected p-value of its alignment (surgery.locate)."""
    significant: bool
    singular_value: float
    energy: float
    """S_i^2 / sum_j S_j^2 of its weight (its head, for OV and QK)."""
    matched_to: int | None = None
    """For a control: the index (in the plan) of the aligned vector it is matched to."""

    def key(self) -> tuple:
        return (self.block, self.weight, self.head, self.side, self.idx)

    def edit(self, op: str, value=None) -> Edit:
        return Edit(block=self.block, weight=self.weight, idx=self.idx, head=self.head, op=op, value=value,
                    side=self.side)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_targets(location, adapter, top: int = 5, controls: int | None = None,
                   embedding: str | None = None, weights=None) -> list[Target]:
    """Up to `top` aligned vectors, then `controls` same-weight and `controls` other-weight controls.

    Aligned: the top of locate's ranking that is aligned beyond chance (p_adj < alpha), at most
    `top`; when none is, the `top` highest-ranked anyway (a validation of them is "not testable").
    weights: take the aligned vectors from these weight types only (e.g. ("K",), the study's claim);
    significance is still that of locate's search over every weight, and other-weight controls
    still come from the other types.
    controls: per kind, default one per aligned vector; control j is matched to aligned vector j mod
    the number aligned. Unaligned means: not significant and |cos| at most the median |cos| of all
    ranked vectors. Each control is the closest in energy share among those not yet chosen (ties:
    the less aligned).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SurgeryError(f"top={top!r} must be a positive integer")
    if controls is not None and (isinstance(controls, bool) or not isinstance(controls, int) or controls < 0):
        raise SurgeryError(f"controls={controls!r} must be a non-negative integer")
    ranking = location.ranking
    if embedding is not None:
        ranking = ranking.where(embedding=embedding)
    if len(set(ranking["embedding"])) > 1:
        raise SurgeryError("the location ranks several embedding sets; say which one with embedding=")
    alpha = location.alpha
    energy = _energies(adapter)
    rows = [_target("aligned", r, alpha, energy) for r in ranking.rows()]
    eligible = rows
    if weights is not None:
        weights = (weights,) if isinstance(weights, str) else tuple(weights)
        ranked = sorted({t.weight for t in rows})
        unknown = sorted(set(weights) - set(ranked))
        if unknown or not weights:
            raise SurgeryError(f"weights={list(weights)!r}: {unknown or 'none'} not ranked; valid: {', '.join(ranked)}")
        eligible = [t for t in rows if t.weight in weights]
    if len(eligible) < top:
        raise SurgeryError(f"top={top} but only {len(eligible)} singular vectors were ranked")
    beyond_chance = sum(t.significant for t in eligible)
    aligned = eligible[:min(top, beyond_chance) or top]  # the ranking puts the significant ones first
    controls = len(aligned) if controls is None else controls
    chosen = {t.key() for t in aligned}
    median = float(np.median(ranking["abs_cos"]))
    pool = [t for t in rows if t.key() not in chosen and not t.significant and t.abs_cos <= median]
    plan = list(aligned)
    for group, same in (("control_same", True), ("control_other", False)):
        for j in range(controls):
            a = aligned[j % len(aligned)]
            if same:
                candidates = [t for t in pool if t.key()[:4] == a.key()[:4]]
            else:
                others = [t for t in pool if t.weight != a.weight]
                candidates = [t for t in others if t.block == a.block] or others
            candidates = [t for t in candidates if t.key() not in chosen]
            if not candidates:
                raise SurgeryError(f"no unaligned vector is left to match aligned vector {j % len(aligned)} "
                                   f"({_where(a)}) for a {group} control; ask for fewer controls")
            best = min(candidates, key=lambda t: (abs(_log(t.energy) - _log(a.energy)), t.abs_cos))
            chosen.add(best.key())
            plan.append(Target(**{**best.to_dict(), "group": group, "matched_to": j % len(aligned)}))
    return plan


def _target(group: str, row: dict, alpha: float, energy: dict) -> Target:
    share = energy[(row["block"], row["weight"], row["head"])]
    return Target(group=group, block=int(row["block"]), weight=str(row["weight"]), head=row["head"],
                  side=str(row["side"]), idx=int(row["idx"]), label=str(row["label"]), cos=float(row["cos"]),
                  abs_cos=float(row["abs_cos"]), p_adj=float(row["p_adj"]), significant=bool(row["p_adj"] < alpha),
                  singular_value=float(row["singular_value"]), energy=float(share[int(row["idx"])]))


class _Energies(dict):
    """(block, weight, head) -> S^2 / sum S^2, decomposed on first use (cached SVDs)."""

    def __init__(self, adapter):
        super().__init__()
        self.adapter = adapter

    def __missing__(self, key):
        block, weight, head = key
        S = decompose(self.adapter, block, weight, head=head).S.double()
        share = (S**2 / (S**2).sum()).tolist() if float((S**2).sum()) > 0 else [0.0] * len(S)
        self[key] = share
        return share


def _energies(adapter) -> _Energies:
    return _Energies(adapter)


def _log(x: float) -> float:
    return math.log(max(x, 1e-300))


def _where(t: Target) -> str:
    head = "" if t.head is None else f" head {t.head}"
    return f"block {t.block} {t.weight}{head} {t.side} #{t.idx}"
