"""How large a cosine random directions reach: exact single-vector laws, Monte Carlo nulls for sets, corrections.

For one fixed unit vector e and a direction u uniform on the unit sphere of R^d, cos = <u, e>
has density proportional to (1 - c^2)^((d-3)/2), i.e. (cos + 1)/2 ~ Beta((d-1)/2, (d-1)/2) and
cos^2 ~ Beta(1/2, (d-1)/2). So P(|cos| >= c) = I_{1-c^2}((d-1)/2, 1/2) exactly, and the typical
|cos| shrinks like sqrt(2 / (pi d)).

A singular vector is compared with a whole *set* of embeddings and its best label is kept, so
the statistic is max_j |<u, e_j>|. Embeddings in a set are not orthogonal, so its law depends
on the set: it is sampled by Monte Carlo (fixed seed) with random unit directions against
the very same set. Far in the tail, where the sample has no draws left, the union bound
n * P(|cos| >= c) (exact per vector, always >= the truth) takes over.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats

from surgery.analysis.cosines import extremes, unit_rows
from surgery.errors import SurgeryError


# ---- one fixed vector: exact ---------------------------------------------------------------------
def pair_pvalue(c, d: int):
    """P(|cos| >= |c|) for a fixed unit vector and a uniformly random direction in R^d (exact)."""
    c2 = np.minimum(np.asarray(c, dtype=float) ** 2, 1.0)
    return special.betainc((d - 1) / 2, 0.5, 1.0 - c2)


def pair_threshold(p, d: int):
    """The |cos| that a random direction exceeds with probability p (inverse of pair_pvalue)."""
    return np.sqrt(1.0 - special.betaincinv((d - 1) / 2, 0.5, np.asarray(p, dtype=float)))


def abs_cos_mean(d: int) -> float:
    """E|cos| between a fixed unit vector and a random direction in R^d: Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))."""
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)


def abs_cos_std(d: int) -> float:
    """Standard deviation of |cos| (E cos^2 = 1/d exactly)."""
    return math.sqrt(max(1.0 / d - abs_cos_mean(d) ** 2, 0.0))


def cos_distribution(d: int):
    """scipy distribution of cos itself on [-1, 1]: (cos + 1)/2 ~ Beta((d-1)/2, (d-1)/2)."""
    a = (d - 1) / 2
    return stats.beta(a, a, loc=-1, scale=2)


def searched_pvalue(p, n_searched: int):
    """Chance that at least one of n independent searches does as well as a single-search p (Sidak)."""
    return -np.expm1(n_searched * np.log1p(-np.minimum(np.asarray(p, dtype=float), 1.0)))


# ---- a set of vectors: Monte Carlo with an exact tail bound ------------------------------------
@dataclass
class Null:
    """Law of max_j |cos(u, e_j)| over one embedding set for random unit directions u in R^d."""

    d: int
    n: int
    """Number of (nonzero) vectors in the set."""
    samples: np.ndarray
    """Sorted Monte Carlo draws of the statistic (empty when exact: a one-vector set)."""
    seed: int

    @property
    def exact(self) -> bool:
        return self.n <= 1

    @property
    def mean(self) -> float:
        return abs_cos_mean(self.d) if self.exact else float(self.samples.mean())

    @property
    def std(self) -> float:
        return abs_cos_std(self.d) if self.exact else float(self.samples.std(ddof=1))

    def pvalue(self, c):
        """P(max_j |cos| >= |c|): exact for one vector; else min(Monte Carlo (1+k)/(M+1), union bound)."""
        c = np.abs(np.asarray(c, dtype=float))
        if self.n == 0:
            return np.where(c > 0, 0.0, 1.0)
        union = np.minimum(1.0, self.n * pair_pvalue(c, self.d))
        if self.exact:
            return union
        m = self.samples.size
        exceed = m - np.searchsorted(self.samples, c, side="left")
        return np.minimum((1.0 + exceed) / (m + 1.0), union)

    def zscore(self, c):
        """(|c| - mean) / std of the statistic under the null."""
        return (np.abs(np.asarray(c, dtype=float)) - self.mean) / self.std

    def threshold(self, p: float) -> float:
        """The smallest |cos| whose p-value is <= p (what a finding needs to reach)."""
        union = float(pair_threshold(min(1.0, p / max(self.n, 1)), self.d))
        if self.exact:
            return union
        m = self.samples.size
        k = math.floor(p * (m + 1) - 1)  # need (1 + exceed) / (m + 1) <= p
        if k < 0:
            mc = math.inf  # p is below the sample's resolution: only the union bound can reach it
        elif k >= m:
            mc = 0.0
        else:
            mc = float(np.nextafter(self.samples[m - k - 1], np.inf))
        return min(mc, union)


def default_draws(n: int, d: int) -> int:
    """Monte Carlo draws: many for small sets, fewer for a vocabulary (the union bound covers the tail)."""
    return int(min(20_000, max(2_000, 1e9 // max(n * d, 1))))


_NULLS: dict = {}
_BLOCK = 4096


def random_directions(m: int, d: int, seed: int = 0) -> torch.Tensor:
    """m directions uniform on the unit sphere of R^d (float32); the first m of a larger draw are the same."""
    blocks = []
    for b in range(-(-m // _BLOCK)):
        key = (d, seed, b)
        if key not in _DIRECTIONS:
            if sum(t.numel() for t in _DIRECTIONS.values()) > 64 * 2 ** 20:
                _DIRECTIONS.clear()  # keep the cache under ~256 MB
            # One generator per block of rows, seeded from (seed, block): prefixes agree across sizes.
            g = torch.Generator().manual_seed(seed * 1_000_003 + b)
            _DIRECTIONS[key] = unit_rows(torch.randn(_BLOCK, d, generator=g), torch.float32)
        blocks.append(_DIRECTIONS[key])
    return torch.cat(blocks)[:m] if blocks else torch.empty(0, d)


_DIRECTIONS: dict = {}


def null_for(embeddings: torch.Tensor, draws: int | None = None, seed: int = 0, progress: bool = False) -> Null:
    """The null law of a set (rows are normalised here; zero rows ignored), cached by content."""
    E = unit_rows(embeddings, torch.float32)
    E = E[E.norm(dim=1) > 0]
    n, d = E.shape
    draws = default_draws(n, d) if draws is None else int(draws)
    if draws < 1:
        raise SurgeryError(f"draws={draws} must be a positive number of random directions")
    key = (hashlib.blake2b(E.numpy().tobytes(), digest_size=16).hexdigest(), n, d, draws, seed)
    if key in _NULLS:
        return _NULLS[key]
    if n <= 1:
        null = Null(d, n, np.empty(0), seed)
    else:
        stat = extremes(random_directions(draws, d, seed), E, 1, progress=progress, desc="chance").max_abs
        null = Null(d, n, np.sort(stat.double().numpy()), seed)
    if len(_NULLS) > 64:
        _NULLS.clear()
    _NULLS[key] = null
    return null


# ---- a subspace: exact law for one vector, Monte Carlo for a set ------------------------------------
# For a fixed unit vector e and a uniformly random k-dimensional subspace B of R^d (equivalently a
# fixed B and a uniformly random e), |P_B e|^2 ~ Beta(k/2, (d-k)/2); k = 1 is cos^2 ~ Beta(1/2, (d-1)/2)
# above. The score of a tied group against a set is max_j |P_B e_j|, sampled as for single vectors.
SUBSPACE_DRAWS = 2000
"""Random subspaces per set. Fewer than for single vectors: a group's p-value is corrected over hundreds of
groups, where the exact union bound, not the sample, decides; the sample refines moderate p-values."""
SUBSPACE_BUDGET = 4e8
"""Multiply-adds one set's subspace null may cost (a few tenths of a second); bigger sets get fewer draws."""
SUBSPACE_MIN_DRAWS = 1000
"""Below this many affordable draws the sample is not worth its cost: the exact union bound alone is used."""


def subspace_pvalue(s, k, d: int):
    """P(|P_B e| >= s) for a fixed unit vector e and a uniformly random k-dimensional subspace B of R^d (exact).

    |P_B e|^2 ~ Beta(k/2, (d-k)/2), so P = I_{1-s^2}((d-k)/2, k/2); for k >= d the projection is e itself (P = 1).
    """
    s2 = np.minimum(np.asarray(s, dtype=float) ** 2, 1.0)
    k = np.asarray(k)
    full = k >= d
    kk = np.where(full, 1, k)
    p = special.betainc((d - kk) / 2, kk / 2, 1.0 - s2)
    return np.where(full, 1.0, p)


@dataclass
class SubspaceNull:
    """Law of max_j |P_B e_j| over one embedding set for uniformly random k-dimensional subspaces B of R^d."""

    d: int
    n: int
    """Number of (nonzero) vectors in the set."""
    samples: np.ndarray
    """[draws, d]: column k-1 holds sorted Monte Carlo draws of the statistic for dimension k (no rows: the
    union bound alone, exact for a one-vector set)."""
    seed: int

    def pvalue(self, s, k):
        """P(max_j |P_B e_j| >= s) for a k-dimensional B: min(Monte Carlo (1+#>=s)/(M+1), union bound n P_1)."""
        s = np.abs(np.asarray(s, dtype=float))
        k = np.broadcast_to(np.asarray(k, dtype=int), s.shape)
        if np.any(k < 1):
            raise SurgeryError(f"subspace dimensions must be >= 1, got {np.unique(k[k < 1])}")
        if self.n == 0:
            return np.where(s > 0, 0.0, 1.0)
        p = np.minimum(1.0, self.n * subspace_pvalue(s, k, self.d))
        if self.n > 1 and self.samples.shape[0]:
            m = self.samples.shape[0]
            for kk in np.unique(k[k < self.d]):
                at = k == kk
                exceed = m - np.searchsorted(self.samples[:, kk - 1], s[at], side="left")
                p[at] = np.minimum((1.0 + exceed) / (m + 1.0), p[at])
        return np.where(k >= self.d, 1.0, p)


_SUBSPACE_NULLS: dict = {}
_FRAMES: dict = {}


FRAME_WIDTH = 16
"""Frames are drawn this wide (or as wide as the set's span, if wider) and sliced: one QR serves every small set."""


def random_frames(m: int, d: int, width: int, seed: int = 0) -> torch.Tensor:
    """[m, d, width] uniformly random orthonormal frames (QR of Gaussian columns), float32, cached.

    Each Gaussian column is drawn from its own seed, and the first w columns of a QR factor span the first w
    Gaussian columns: so a narrower frame is the first columns of a wider one, and sets of different sizes see
    the same random subspaces whatever order they are asked in.
    """
    wide = max(width, min(FRAME_WIDTH, d))
    key = (m, d, wide, seed)
    if key not in _FRAMES:
        if sum(t.numel() for t in _FRAMES.values()) > 32 * 2 ** 20:
            _FRAMES.clear()  # keep the cache under ~128 MB
        cols = [torch.randn(m, d, generator=torch.Generator().manual_seed(seed * 1_000_003 + 7919 * c + 7))
                for c in range(wide)]
        _FRAMES[key] = torch.linalg.qr(torch.stack(cols, dim=2)).Q
    return _FRAMES[key][..., :width]


def subspace_null_for(embeddings: torch.Tensor, draws: int | None = None, seed: int = 0) -> SubspaceNull:
    """The subspace null of a set (rows normalised here; zero rows ignored), for every dimension k at once.

    A random k-subspace against a fixed set is a fixed one (the first k coordinates) against the set
    turned by a uniformly random rotation. Only the set's span turns: with E^T = A R (thin QR, A [d, n']),
    the turned set is F R for a uniformly random orthonormal frame F [d, n'], and its squared projections
    on the first k coordinates, for every k, are cumulative sums down the rows of F R.
    Draws: SUBSPACE_DRAWS, fewer where a draw costs more (SUBSPACE_BUDGET); where fewer than
    SUBSPACE_MIN_DRAWS are affordable (a 1000-step timestep table, a vocabulary), the exact union bound
    alone is used: never below the truth.
    """
    E = unit_rows(embeddings, torch.float64)
    E = E[E.norm(dim=1) > 0]
    n, d = E.shape
    width = min(n, d)
    affordable = int(SUBSPACE_BUDGET // max(d * width * (n + width), 1))  # the frame (QR) and the turned set
    if draws is not None and int(draws) < 1:
        raise SurgeryError(f"draws={draws} must be a positive number of random subspaces")
    draws = min(SUBSPACE_DRAWS, affordable) if draws is None else int(draws)
    key = (hashlib.blake2b(E.numpy().tobytes(), digest_size=16).hexdigest(), n, d, draws, seed)
    if key in _SUBSPACE_NULLS:
        return _SUBSPACE_NULLS[key]
    if n <= 1 or draws < SUBSPACE_MIN_DRAWS:
        null = SubspaceNull(d, n, np.empty((0, d)), seed)
    else:
        _, R = torch.linalg.qr(E.T)  # E^T = A R: R [n', n] holds the set in an orthonormal basis of its span
        # A Monte Carlo sample needs no more than float32 (its resolution is 1 / draws).
        Y = random_frames(draws, d, width, seed) @ R.float()  # [draws, d, n]: the set turned at random
        stat = (Y * Y).cumsum(1).amax(2).clamp(max=1.0).sqrt()  # [draws, d]: best label, k = 1..d
        null = SubspaceNull(d, n, np.sort(stat.double().numpy(), axis=0), seed)
    if len(_SUBSPACE_NULLS) > 64:
        _SUBSPACE_NULLS.clear()
    _SUBSPACE_NULLS[key] = null
    return null
