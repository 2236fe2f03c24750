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
