"""A group-sequential test per edit: stop an edit once its damage is established or out of reach.

An atlas tests m edits against one shared baseline, each on paired episodes (same seeds). Most
edits are harmless and a few are plainly damaging; running every one for all N episodes spends
most of the budget where the answer was clear early. The design:

- Looks at n_1 < n_2 < ... < n_K = N pairs (`schedule`; default fractions 0.2, 0.5, 1 of N).
  Stage k plays episodes [n_{k-1}, n_k) of the baseline and of every edit still open.
- At look k an open edit's p_k is the two-sided paired permutation (sign-flip) p of its mean
  return difference on the n_k pairs so far (`surgery.stats.sign_flip_p`, exact).
- Weights w_1..w_K summing to 1 split the level across looks (alpha spending): w_k is the increase
  of (n_k / N)^rho, rho = `spend` (default 2, Kim and DeMets' power family), so most of it is kept
  for the last look: with looks at 0.2, 0.5, 1, w = 0.04, 0.21, 0.75. (Equal weights, plain
  Bonferroni over looks, cost a third of the power against damage made of rare falls in
  simulation; see benchmarks/sequential_power.py.)
- Its final p-value is p* = min(1, min_k p_k / w_k) over the looks it reached.
- Efficacy stop at a look before the last: p_k / w_k <= alpha / m.
- Futility stop at a look before the last: the conditional power -- the chance of ending with
  p_K / w_K <= alpha / m if the effect seen so far is the true one -- is below `futility`,
  both for the mean (the tested statistic) and for the signed ranks. Either alone misleads on
  returns: one baseline episode in which HalfCheetah flips over (a -1500 outlier) drags every
  edit's early mean toward "no damage", and damage made of rare catastrophes (the hopper falls in
  a third of the episodes) looks weak to the ranks. Simulated (m = 64, N = 30): a flip in 4% of
  episodes lost 31 of 149 clearly damaging edits with the mean's rule alone, 2 with both.
- Decision: `surgery.stats.adjust_pvalues` (Holm by default) over the m values p*.

Guarantees (docs/atlas.md has the arguments at length):

1. Each p* is a valid p-value whatever the stopping rule: had the edit run to the end, its looks
   would give p_1..p_K, each valid at its fixed n_k, and P(min_k p_k / w_k <= u) <= sum_k
   P(p_k <= w_k u) <= sum_k w_k u = u (weighted Bonferroni over looks). Stopping only removes
   looks, so p* >= min_k p_k / w_k over all K looks.
2. So Holm over the p* controls the family-wise error at alpha under any dependence between
   edits (they share the baseline episodes, so they are dependent); Benjamini-Hochberg controls
   the false discovery rate where its positive-dependence condition holds (Benjamini-Yekutieli
   under any dependence).
3. An efficacy stop changes no decision: its p* <= p_k / w_k <= alpha / m, which Holm (and BH)
   rejects whatever the other p-values are.
4. A futility stop can only raise p* (fewer looks to take the minimum over), and Holm and BH
   reject less when any p-value rises: it never adds a false rejection. It costs power for
   effects that look small early; tests/test_sequential.py measures how much.

The conditional power uses a normal approximation of each statistic over its permutation standard
deviation (z = sum d / sqrt(sum d^2); signed ranks: sum sign(d) r / sqrt(sum r^2); against a pool, their
unpaired counterparts, `two_sample_z`: the mean difference and the Mann-Whitney rank sum) and the B-value
projection of Lan and Wittes (1988): B(t) = z sqrt(t) at information fraction t = n_k / N, drift
estimated as B(t) / t. It only decides when to stop; no p-value depends on it.

The damage interval follows the same weighted Bonferroni: the interval at look k (Student's t) has
confidence 1 - (1 - c) w_k, so for normal differences all K looks' intervals cover together with
probability c, and the one at the look where the edit stopped does too (docs/atlas.md: not for rare
catastrophes at a few pairs).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from surgery.checks import integer, level, positive_number
from surgery.errors import SurgeryError
from surgery.names import CORRECTIONS
from surgery.stats import adjust_pvalues, sign_flip_p, two_sample_p

__all__ = ["Design", "Sequential", "Simulation", "schedule", "simulate", "conditional_power", "combine_looks",
           "two_sample_z", "pool_p", "STOPS", "POOL_RESAMPLES", "POOL_REFINE"]

POOL_RESAMPLES, POOL_REFINE = 4000, 200_000
"""The pooled test's Monte Carlo resamples, and where a p is below 0.01 (stats.two_sample_p): its smallest p is
1 / (1 + POOL_REFINE) = 5e-6, what an efficacy stop at the first look of a few hundred edits needs."""

STOPS = ("efficacy", "futility", "complete")
"""Why an edit stopped: damage (or benefit) established early, out of reach, or all looks run."""


def schedule(episodes: int, fractions) -> tuple[int, ...]:
    """Pairs at each look: ceil(f * episodes) for each fraction, strictly increasing, ending at `episodes`."""
    try:
        f = [float(x) for x in ([fractions] if isinstance(fractions, (int, float)) else fractions)]
    except (TypeError, ValueError):
        raise SurgeryError(f"looks={fractions!r} must be increasing fractions of the episodes in (0, 1], the "
                           "last one 1, e.g. (0.2, 0.5, 1.0)") from None
    if not f or any(not 0 < x <= 1 for x in f) or any(b <= a for a, b in zip(f, f[1:])) or f[-1] != 1:
        raise SurgeryError(f"looks={tuple(f)} must be increasing fractions of the episodes in (0, 1], the last "
                           "one 1, e.g. (0.2, 0.5, 1.0)")
    n = [max(1, math.ceil(x * episodes - 1e-9)) for x in f]
    if any(b <= a for a, b in zip(n, n[1:])):
        raise SurgeryError(f"looks={tuple(f)} at {episodes} episodes give {n} pairs: two looks fall on the same "
                           "episode; use fewer looks or more episodes")
    return tuple(n)


def conditional_power(z: float, t: float, z_target: float) -> float:
    """P(|Z(1)| >= z_target) given Z(t) = z, the drift taken to be what was seen (B-value projection)."""
    if t >= 1:
        return float(abs(z) >= z_target)
    b = z * math.sqrt(t)  # B-value: a Brownian motion with drift theta, B(1) = Z(1)
    mean = b / t  # B(t) + theta (1 - t), theta estimated by B(t) / t
    sd = math.sqrt(1 - t)
    return _upper((z_target - mean) / sd) + _upper((z_target + mean) / sd)


def _upper(x: float) -> float:
    """P(N(0, 1) >= x) (math.erfc: scipy's per-call overhead is 100x this in the look loop)."""
    return 0.5 * math.erfc(x / math.sqrt(2))


@dataclass(frozen=True)
class Design:
    """The sequential plan of one atlas: looks, family size, level, futility."""

    looks: tuple[int, ...]
    """Pairs at each look, increasing; the last is the full number of episodes."""
    edits: int
    """m: edits tested (the family for the correction and the efficacy bound)."""
    alpha: float = 0.05
    """Family-wise level (Holm) or false discovery rate (BH) of the final decisions."""
    futility: float = 0.1
    """Stop an edit at a look before the last when its conditional power falls below this (0: never)."""
    correction: str = "holm"
    """How the final p* are corrected across edits (surgery.stats.adjust_pvalues)."""
    spend: float = 2.0
    """rho: look k's share w_k of the level is the increase of (n_k / N)^rho; larger keeps more for the last look."""

    def __post_init__(self):
        looks = tuple(int(n) for n in self.looks)
        if not looks or looks[0] < 1 or any(b <= a for a, b in zip(looks, looks[1:])):
            raise SurgeryError(f"looks={self.looks} must be increasing positive numbers of pairs")
        positive_number(self.spend, "spend")  # the power rho of the alpha spending
        integer(self.edits, "edits", low=1)
        level(self.alpha)
        if isinstance(self.futility, bool) or not isinstance(self.futility, numbers.Real) \
                or not 0 <= self.futility < 1:
            raise SurgeryError(f"futility={self.futility!r} must be in [0, 1): a conditional power (0: never stop "
                               "for futility)")
        if self.correction not in CORRECTIONS:
            raise SurgeryError(f"correction={self.correction!r} is not known; valid: "
                               f"{', '.join(map(repr, CORRECTIONS))}")
        object.__setattr__(self, "looks", looks)
        if min(self.weights) <= 0:  # (n_1/N)^spend underflows: a look with no share of the level divides by 0
            raise SurgeryError(f"spend={self.spend!r} leaves the look at {looks[0]} of {looks[-1]} pairs no share "
                               "of the level ((n_1/N)^spend = 0 in floating point); use a smaller spend "
                               "(2 is the default)")

    @property
    def K(self) -> int:
        return len(self.looks)

    @property
    def weights(self) -> tuple[float, ...]:
        """w_k: each look's share of the level, the increases of (n_k / N)^spend (they sum to 1)."""
        t = [(n / self.looks[-1]) ** self.spend for n in self.looks]
        return tuple(b - a for a, b in zip([0.0] + t[:-1], t))

    def efficacy_p(self, k: int) -> float:
        """Look k's p (0-based) at or below which the edit is significant whatever the others do: w_k alpha / m."""
        return self.weights[k] * self.alpha / self.edits

    @property
    def z_target(self) -> float:
        """The |z| whose two-sided normal p is the last look's efficacy bound: what conditional power aims at."""
        return float(sps.norm.isf(self.efficacy_p(self.K - 1) / 2))

    def smallest_p(self, pool: int = 0) -> float:
        """The smallest p an edit can reach at the last look. Paired: the sign-flip test's 2^(1-N). Against a pool
        of P: the permutation test's 1 / C(N + P, N) (at best only the observed split is as extreme), and never
        below the Monte Carlo floor 1 / (1 + POOL_REFINE)."""
        n = self.looks[-1]
        if not pool:
            return 2.0 ** (1 - n)
        return max(1 / (1 + POOL_REFINE), 1 / math.comb(n + pool, n))

    def reachable(self, pool: int = 0) -> bool:
        """Whether any edit can be significant: `smallest_p` is within the last look's bound."""
        return self.smallest_p(pool) <= self.efficacy_p(self.K - 1)

    def pairs_needed(self) -> int:
        """The fewest pairs N with which 2^(1-N) is within the last look's bound w_K alpha / m."""
        return 1 + math.ceil(math.log2(1 / self.efficacy_p(self.K - 1)))

    def p_final(self, p_looks) -> float:
        """p* = min(1, min_k p_k / w_k) over the looks reached (any test's p-values: also McNemar's)."""
        return combine_looks(p_looks, self.weights)

    def futility_p(self, k: int) -> float:
        """The p at look k (0-based) above which the mean's trend alone would stop an edit (normal approximation).

        An edit stops only where the signed ranks' trend agrees; 1 where no edit stops (the last look).
        """
        if self.futility == 0 or k == self.K - 1:
            return 1.0
        t = self.looks[k] / self.looks[-1]
        lo, hi = 0.0, 40.0  # conditional power rises with |z|: bisect for where it crosses `futility`
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if conditional_power(mid, t, self.z_target) < self.futility else (lo, mid)
        return float(2 * sps.norm.sf(hi))

    def describe(self, unit: str = "pairs") -> str:
        """The design in one sentence; `unit` names what a look counts ("episodes" when judged against a pool)."""
        stops = ", ".join(f"{n} {unit}: p > {self.futility_p(k):.2g}" for k, n in enumerate(self.looks[:-1]))
        w = ", ".join(f"{x:.2f}" for x in self.weights)
        return (f"{self.K} looks at {', '.join(map(str, self.looks))} {unit} with shares {w} of the level; an edit "
                f"stops for efficacy when p_k / w_k <= alpha/m = {self.alpha:g}/{self.edits}, for futility when its "
                f"conditional power (mean and signed ranks) is below {self.futility:g}"
                + (f" ({stops})" if stops else "") +
                f"; final p* = min(1, min_k p_k / w_k), {self.correction}-corrected across {self.edits} edits")


@dataclass
class EditTrack:
    """One edit's looks so far."""

    p: list = field(default_factory=list)
    """p_k at each look reached."""
    z: list = field(default_factory=list)
    """Sign-flip z of the mean at each look reached."""
    z_rank: list = field(default_factory=list)
    """Signed-rank z at each look reached."""
    stopped: str | None = None
    """None while open, else one of STOPS."""

    @property
    def looks(self) -> int:
        return len(self.p)


class Sequential:
    """The state of the design over m edits: feed it each look's paired differences, ask who is still open."""

    def __init__(self, design: Design):
        self.design = design
        self._z_target = design.z_target
        self.tracks = [EditTrack() for _ in range(design.edits)]

    def open(self) -> list[int]:
        """Edits still running."""
        return [e for e, t in enumerate(self.tracks) if t.stopped is None]

    def look(self, k: int, differences, baseline=None, p_values: dict | None = None, pool=None) -> dict[int, str]:
        """Look k (0-based): `differences[e]` holds edit e's first n_k paired differences (edited - baseline).

        Every open edit must be given; returns {edit: "continue" or why it stopped}.
        baseline: the baseline's first n_k returns, when known: futility is then judged without the pairs
        whose baseline episode is a catastrophe (`typical_pairs`). Only the stopping changes; p-values use
        every pair. p_values: each open edit's p_k from another valid test; default the sign-flip p.
        pool: unpaired, against these unedited returns: `differences[e]` are then edit e's own returns,
        `p_values` must be given (the two-sample test's), and futility reads `two_sample_z`.
        """
        d, n = self.design, self.design.looks[k]
        if pool is not None and (p_values is None or baseline is not None):
            raise SurgeryError("against a pool, give the two-sample p_values and no baseline")
        keep = np.ones(n, dtype=bool) if baseline is None else typical_pairs(baseline)
        if keep.shape != (n,):
            raise SurgeryError(f"look {k}: expected {n} baseline returns, got {keep.shape}")
        out = {}
        for e in self.open():
            x = np.asarray(differences[e], dtype=float)
            if x.shape != (n,):
                raise SurgeryError(f"edit {e} at look {k}: expected {n} paired differences, got {x.shape}")
            track = self.tracks[e]
            if track.looks != k:
                raise SurgeryError(f"edit {e} has had {track.looks} looks; look {k} is out of order")
            p = sign_flip_p(x) if p_values is None else float(p_values[e])
            z, z_rank = (_z(x), _z_rank(x)) if pool is None else two_sample_z(x, pool)
            track.p.append(p), track.z.append(z), track.z_rank.append(z_rank)
            if not keep.all():  # what futility sees: the pairs with a typical baseline episode
                z, z_rank = _z(x[keep]), _z_rank(x[keep])
            t = n / d.looks[-1]
            if k == d.K - 1:
                track.stopped = "complete"
            elif p <= d.efficacy_p(k):  # p_k / w_k <= alpha / m
                track.stopped = "efficacy"
            elif d.futility > 0 and max(conditional_power(z, t, self._z_target),
                                        conditional_power(z_rank, t, self._z_target)) < d.futility:
                track.stopped = "futility"
            out[e] = track.stopped or "continue"
        return out

    def p_final(self) -> np.ndarray:
        """p* = min(1, min_k p_k / w_k) per edit, over the looks it reached (nan if it had none)."""
        return np.array([self.design.p_final(t.p) if t.p else np.nan for t in self.tracks])

    def p_adjusted(self) -> np.ndarray:
        p = self.p_final()
        if np.isnan(p).any():
            raise SurgeryError(f"{int(np.isnan(p).sum())} edits have had no look yet")
        return adjust_pvalues(p, self.design.correction)


CATASTROPHE_MADS = 5.0
"""A baseline episode is a catastrophe below median - max(5 robust SDs, 10% of |median|) of the baseline so far."""


def typical_pairs(baseline) -> np.ndarray:
    """Which pairs' baseline episodes are typical: a mask without the baseline's catastrophes.

    Why: every edit shares the baseline, so one baseline episode in which the cheetah flips over or the
    hopper falls (5800 -> 188) adds the same huge "the edit did better" difference to every edit. With
    6 pairs at the first look it outweighs real damage in both the mean and the signed ranks, and futility
    stops every edit at once (measured: the HalfCheetah twin's atlas, docs/atlas.md). Leaving those pairs
    out of the futility judgement only removes evidence against damage, so edits stay open longer; the
    p-values, and so the error guarantees, use every pair.
    """
    b = np.asarray(baseline, dtype=float)
    med = float(np.median(b))
    spread = 1.4826 * float(np.median(np.abs(b - med)))
    return b >= med - max(CATASTROPHE_MADS * spread, 0.1 * abs(med))


def combine_looks(p_looks, weights) -> float:
    """p* = min(1, min_k p_k / w_k) over the looks reached: a valid p-value when the weights sum to at most 1."""
    return float(min(1.0, min(p / w for p, w in zip(p_looks, weights))))


def pool_p(x, pool, edit: int, look: int) -> float:
    """An edit's p at a look against the pool: the unpaired permutation test, seeded by (edit, look) so that a
    rerun, or a report rebuilt from the store, gets the same p."""
    return two_sample_p(x, pool, POOL_RESAMPLES, POOL_REFINE, seed=1_000_003 * look + edit)


def two_sample_z(x, pool) -> tuple[float, float]:
    """Edited returns x against a pool of unedited ones: (z of the mean difference, z of the Mann-Whitney rank
    sum), each over its permutation standard deviation; positive where the edit did better. The unpaired
    counterparts of `_z` and `_z_rank`.

    Why not the paired statistics of x - mean(pool): on skewed returns (HalfCheetah collapses in 12% of
    episodes) the pool's mean sits below a typical episode, so an edit whose first episodes happen not to
    collapse has every difference positive, z near sqrt(n), and looks like a strong effect: it never stops for
    futility although the pool itself produces such a run half the time. These read x against the pool's
    whole spread.
    """
    x, pool = np.asarray(x, dtype=float), np.asarray(pool, dtype=float)
    both = np.concatenate([x, pool])
    n, total = x.size, both.size
    # Var(mean of a random n-subset of `both`, drawn without replacement) = sigma^2 (N - n) / (n (N - 1)).
    var = float(both.var()) * (total - n) / (n * (total - 1))
    z = float((x.mean() - both.mean()) / math.sqrt(var)) if var > 0 else 0.0
    ranks = sps.rankdata(both)
    _, ties = np.unique(both, return_counts=True)
    rank_var = n * pool.size / 12 * ((total + 1) - float(np.sum(ties ** 3 - ties)) / (total * (total - 1)))
    z_rank = float((ranks[:n].sum() - n * (total + 1) / 2) / math.sqrt(rank_var)) if rank_var > 0 else 0.0
    return z, z_rank


def _z(x: np.ndarray) -> float:
    """sum d / sqrt(sum d^2): the sign-flip statistic over its permutation standard deviation."""
    s2 = float(np.sum(x * x))
    return float(np.sum(x) / math.sqrt(s2)) if s2 > 0 else 0.0


def _z_rank(x: np.ndarray) -> float:
    """The signed-rank statistic sum sign(d) rank|d| (zeros dropped, ties averaged) over its permutation sd."""
    x = x[x != 0]
    if x.size == 0:
        return 0.0
    r = sps.rankdata(np.abs(x))
    return float(np.sum(np.sign(x) * r) / math.sqrt(np.sum(r * r)))


@dataclass(frozen=True)
class Simulation:
    """What the design decides on a table of potential paired differences."""

    p_final: np.ndarray
    p_adjusted: np.ndarray
    rejected: np.ndarray
    """p_adjusted <= alpha."""
    pairs: np.ndarray
    """Pairs each edit used."""
    stopped: np.ndarray
    """Why each edit stopped (STOPS)."""


def simulate(differences, design: Design, baseline=None, pool=None, p_value=None) -> Simulation:
    """Run the design on `differences` [m, N]: row e holds every paired difference edit e would give.

    The same `Sequential` the atlas uses, fed by slices: for tests of its error rates and power.
    baseline: the shared baseline's N returns, as the atlas passes them (futility without its catastrophes).
    pool: unpaired, as an atlas with a pool: `differences` are then the edits' returns, and `p_value(e, k, n)`
    gives edit e's two-sample p at look k from its first n episodes.
    """
    D = np.asarray(differences, dtype=float)
    if D.ndim != 2 or D.shape != (design.edits, design.looks[-1]):
        raise SurgeryError(f"differences must be [edits, N] = [{design.edits}, {design.looks[-1]}], got {D.shape}")
    seq = Sequential(design)
    for k, n in enumerate(design.looks):
        if not seq.open():
            break
        p = None if p_value is None else {e: p_value(e, k, n) for e in seq.open()}
        seq.look(k, {e: D[e, :n] for e in seq.open()}, None if baseline is None else np.asarray(baseline)[:n], p,
                 pool)
    p_adj = seq.p_adjusted()
    used = np.array([design.looks[t.looks - 1] for t in seq.tracks])
    return Simulation(seq.p_final(), p_adj, p_adj <= design.alpha, used, np.array([t.stopped for t in seq.tracks]))
