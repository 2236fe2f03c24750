"""Tied singular values: which singular vectors are identifiable one by one, and which only as a subspace.

When two singular values are nearly equal, a small change of the weight can turn their vectors
anywhere inside the plane they span: a single vector's cosine with an embedding is then an
accident of the training run (or of the solver), while the plane itself is well defined.

**Perturbation theory.** For `W + E`, the vector of triple i turns towards triple j by (first
order; Stewart & Sun, *Matrix Perturbation Theory*, V.2)
`(S_i (u_j.E v_i) + S_j (u_i.E v_j)) / (S_i^2 - S_j^2)`, about `e_ij / (S_i - S_j)` for close
values, where `e_ij` is E's entry coupling the two triples. Wedin's sin-theta theorem bounds the
whole turn by `||E||_2 / delta` (delta: the gap to the nearest other singular value): the worst
case, where all of E acts on one pair. A perturbation spread over a weight's m x n entries couples
any one pair by about `||E||_2 / (sqrt(m) + sqrt(n))` (exact for independent entries, whose
spectral norm is sqrt(m) + sqrt(n) times their size). So the typical turn is
`noise / ((sqrt(m) + sqrt(n)) rel_gap)`, with `noise = ||E||_2 / S_0` and `rel_gap = delta / S_0`
(relative to the largest singular value, not to S_i: the perturbation is additive and the same for
every triple of a weight, so a small singular value is not better protected).

**The criterion.** Neighbours i and i+1 are *tied* when that typical turn reaches `MAX_SIN = 0.5`
(30 degrees): `(S_i - S_{i+1}) / S_0 < noise / (MAX_SIN (sqrt(m) + sqrt(n)))`. Runs of tied
neighbours are *groups*; a triple alone in its group is *identifiable*. On a side with more
dimensions than triples (a GPT-2 head's OV: rank d_head in d_model) the last triple has the zeros
of the complement as a neighbour; a group that reaches them, or the triples a fast route did not
compute, is *open*: its span is not determined. `noise` is measured (scripts/tie_calibration.py:
two continuations of a shipped model's training that differ only in minibatch noise; the criterion
is checked there against how far the vectors actually turned; docs/analysis.md, "Tied singular
values"). Wedin's worst case (`||E||_2 / delta < 0.5`) is the stricter rule `noise` x (sqrt(m) +
sqrt(n)) would give.

**The score of a group.** The norm of an embedding's (unit) projection on the group's span, i.e.
the best |cos| of any unit vector in the span: invariant under any rotation inside the group.
Its chance law is `surgery.analysis.chance.SubspaceNull`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from surgery.analysis.settings import NOISE
from surgery.errors import SurgeryError

__all__ = ["MAX_SIN", "NOISE", "Ties", "ties", "tie_threshold", "near_null", "projection_maxima", "perturbation"]

MAX_SIN = 0.5
"""The typical turn (sin of the angle) at which a vector stops counting as identifiable: 30 degrees."""


@dataclass(frozen=True)
class Ties:
    """The tie structure of one weight's spectrum (`ties(S, ...)`), one entry per triple."""

    rel_gap: np.ndarray
    """Distance to the nearest other singular value (or to 0 where the side has a complement), over S_0."""
    group: np.ndarray
    """Index of the first triple of the triple's group (groups are runs of consecutive triples)."""
    size: np.ndarray
    """Number of triples in the triple's group."""
    open: np.ndarray
    """True where the group touches what is not known or not a triple: the zeros of the complement (a side
    with more dimensions than triples) or triples a fast route did not compute. Its span is not determined."""
    threshold: float
    """The relative gap below which neighbours are tied: noise / (MAX_SIN (sqrt(m) + sqrt(n)))."""

    @property
    def identifiable(self) -> np.ndarray:
        """A triple alone in its group, with a known gap on both sides."""
        return (self.size == 1) & ~self.open

    def groups(self) -> list[tuple[int, int, bool]]:
        """(first, size, open) of every group, in order."""
        firsts = np.flatnonzero(self.group == np.arange(self.group.size))
        return [(int(f), int(self.size[f]), bool(self.open[f])) for f in firsts]


def tie_threshold(noise: float, shape: tuple[int, int]) -> float:
    """The relative gap below which neighbouring triples of an m x n weight are tied (see the module docstring)."""
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < np.inf:
        raise SurgeryError(f"noise={noise!r} must be a non-negative number (||E||_2 / S_0 of the perturbation)")
    m, n = shape
    return float(noise) / (MAX_SIN * (math.sqrt(m) + math.sqrt(n)))


def ties(S, noise: float, shape: tuple[int, int], complement: bool = False, complete: bool = True) -> Ties:
    """Relative gaps and tied groups of a spectrum S (descending, every triple of one m x n weight).

    noise: ||E||_2 / S_0 of the perturbation to survive. shape: (m, n) of the weight (for a head's OV or QK,
    d_model x d_model). complement: the residual side has more dimensions than triples, so the smallest triple
    also has the zeros of the complement as a neighbour. complete: False when S holds only the leading triples
    (a fast route): the gap below the last one is unknown, so its group is open.
    """
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 1 or S.size == 0 or not np.all(np.isfinite(S)) or np.any(S < 0) or np.any(np.diff(S) > 0):
        raise SurgeryError(f"singular values must be a non-empty, finite, non-negative, descending 1-d array; "
                           f"got shape {S.shape}")
    threshold = tie_threshold(noise, shape)
    r = S.size
    scale = S[0] if S[0] > 0 else 1.0
    step = -np.diff(S) / scale  # [r-1] gap between triple i and i+1
    below_last = S[-1] / scale if (complement and complete) else (np.nan if not complete else np.inf)
    above = np.concatenate([[np.inf], step])
    below = np.concatenate([step, [below_last]])
    rel_gap = np.fmin(above, below)  # fmin: an unknown gap (nan) leaves the known one
    if not complete and r == 1:
        rel_gap = np.full(1, np.nan)
    # Link i and i+1 when their gap is below the threshold. With noise 0 only exact ties link.
    link = step < threshold if threshold > 0 else step <= 0
    starts = np.concatenate([[True], ~link])
    group = np.maximum.accumulate(np.where(starts, np.arange(r), 0))
    size = np.bincount(group, minlength=r)[group]
    tail_open = (not complete) or (complement and S[-1] / scale < threshold) or (complement and S[-1] == 0)
    open_ = np.zeros(r, dtype=bool)
    if tail_open:
        open_[group == group[-1]] = True
    return Ties(rel_gap, group, size, open_, threshold)


# ---- scoring a group as a subspace ------------------------------------------------------------------
def near_null(S, noise: float) -> np.ndarray:
    """Per triple: is its singular value below the weight's noise floor, `noise` x S_0?

    A perturbation of spectral norm `noise` x S_0 (retraining noise, measured: NOISE) moves every
    singular value by at most that much (Weyl), so a triple below it could be noise alone: the
    weight does not reliably carry its direction, and removing it changes the weight by less than
    retraining does. Such a triple is never reported as a carrier, however well its vector aligns
    (LunarLander's best return_out vector had S = 3.2e-6 against S_0 = 0.82).
    """
    S = np.asarray(S, dtype=float)
    return S < float(noise) * (S[0] if S.size else 0.0)


def projection_maxima(bases: list[torch.Tensor], E: torch.Tensor, complement: list[bool] | None = None,
                      chunk_elements: int = 16 * 2 ** 20):
    """Per basis B [k, d] (orthonormal rows): max_j |B e_j| over the unit rows e_j of E [n, d], and the argmax j.

    |B e| is the norm of e's projection on span(B) = the largest |cos| of e with any unit vector of the span;
    it does not change when B is turned within its span. Where complement[i] is True, bases[i] spans the
    orthogonal complement of the group in R^d instead (cheaper for a group wider than d/2), and the score is
    sqrt(1 - min_j |B e_j|^2). Zero rows of E (no direction) never score. One product per chunk of bases.
    """
    if not bases:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    complement = [False] * len(bases) if complement is None else list(complement)
    n = E.shape[0]
    E_t = E.T.contiguous()
    empty = E.norm(dim=1) == 0  # [n]
    best, arg = [], []
    per = max(1, chunk_elements // max(n, 1))  # basis rows per product
    i = 0
    while i < len(bases):
        j, rows = i, 0
        while j < len(bases) and (j == i or rows + bases[j].shape[0] <= per):
            rows += bases[j].shape[0]
            j += 1
        B = torch.cat([b.reshape(-1, E.shape[1]) for b in bases[i:j]]).to(E.dtype)  # [rows, d]
        seg = torch.repeat_interleave(torch.arange(j - i), torch.tensor([b.shape[0] for b in bases[i:j]]))
        C = B @ E_t  # [rows, n]
        sq = torch.zeros(j - i, n, dtype=C.dtype).index_add_(0, seg, C * C)  # [groups, n]
        comp = torch.tensor(complement[i:j])
        sq = torch.where(comp[:, None], 1.0 - sq, sq).clamp(0.0, 1.0)
        v, a = sq.masked_fill(empty[None, :], -1.0).max(dim=1)  # [groups]
        best.append(v.clamp(min=0.0).sqrt().double())
        arg.append(a)
        i = j
    return torch.cat(best).numpy(), torch.cat(arg).numpy()


# ---- measuring a perturbation ----------------------------------------------------------------------
def perturbation(model_a, model_b, weights=("K", "V", "OV", "QK")):
    """How far each weight of model_b is from model_a's, relative to model_a's largest singular value.

    Both models must share a basis (e.g. two continuations of one training run): per (block, weight,
    head) the table has S_0 (model_a), `rel` = ||W_b - W_a||_2 / S_0, `rel_fro` = ||W_b - W_a||_F / S_0,
    and `weyl` = max_i |S_i(b) - S_i(a)| / S_0. By Weyl's inequality |S_i(W + E) - S_i(W)| <= ||E||_2,
    `weyl` is a lower bound on `rel` for *any* E that maps one weight to the other after orthogonal
    changes of basis: it needs no shared basis, so it also bounds how far apart two training seeds are.
    """
    from adapters import wrap
    from surgery.analysis.tables import Table
    from surgery.core.decomposition import decompose, factors

    a, b = wrap(model_a), wrap(model_b)
    if (a.n_blocks, a.d_model, a.n_heads) != (b.n_blocks, b.d_model, b.n_heads):
        raise SurgeryError(f"the models differ in shape: {a!r} and {b!r}")
    rows = {k: [] for k in ("block", "weight", "head", "sigma_max", "rel", "rel_fro", "weyl")}
    for blk in range(a.n_blocks):
        for w in weights:
            Sa = decompose(a, blk, w, dtype=torch.float64).S
            Sb = decompose(b, blk, w, dtype=torch.float64).S
            Ea = _dense(factors(a, blk, w))
            Eb = _dense(factors(b, blk, w))
            per_head = w in ("OV", "QK")
            for h in range(a.n_heads) if per_head else [-1]:
                sa, sb = (Sa[h], Sb[h]) if per_head else (Sa, Sb)
                E = (Eb[h] - Ea[h]) if per_head else (Eb - Ea)
                s0 = float(sa[0])
                rows["block"].append(blk)
                rows["weight"].append(w)
                rows["head"].append(h)
                rows["sigma_max"].append(s0)
                rows["rel"].append(float(torch.linalg.matrix_norm(E, ord=2)) / s0)
                rows["rel_fro"].append(float(torch.linalg.matrix_norm(E)) / s0)
                rows["weyl"].append(float((sb - sa).abs().max()) / s0)
    return Table({k: np.array(v, dtype=object if k == "weight" else None) for k, v in rows.items()},
                 nullable=("head",))


def _dense(fs) -> torch.Tensor:
    """The weight in float64 from its factors: [d_in, d_out], or [H, d, d] for OV and QK."""
    mats = [f.detach().to(torch.float64) for f in fs]
    return mats[0] if len(mats) == 1 else mats[0] @ mats[1]
