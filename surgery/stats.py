"""Statistics of behaviour evaluations, all from scipy.stats: intervals, survival, paired tests, corrections.

Conventions: confidence levels are two-sided; paired differences are `edited - baseline`, so a
negative effect means the edit lowered the metric; every resampling takes a seed and is
deterministic for it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from surgery.checks import integer, level, one_of
from surgery.errors import SurgeryError
from surgery.names import CORRECTIONS

BOOTSTRAP_METHODS = ("BCa", "percentile", "basic")
"""The interval methods of scipy.stats.bootstrap."""

__all__ = [
    "Estimate", "FailureRate", "Survival", "PairedComparison", "PairedFailures", "Comparison",
    "mean_ci", "mean_ci_t", "summarize", "failure_rate", "survival", "paired_comparison",
    "paired_failures", "rank_biserial", "adjust_pvalues", "compare", "CORRECTIONS", "scipy_rng",
    "sign_flip_p", "two_sample_p", "welch_ci", "unpaired_failures_p",
]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided confidence interval."""

    value: float
    low: float
    high: float
    confidence: float = 0.95


@dataclass(frozen=True)
class FailureRate:
    """k failures in n episodes, the rate and its Wilson score interval."""

    failures: int
    episodes: int
    rate: Estimate


@dataclass(frozen=True)
class Survival:
    """Kaplan-Meier survival of time to failure; episodes that reached the time limit are censored."""

    times: np.ndarray
    """Distinct observed steps (failures and censorings), ascending."""
    probability: np.ndarray
    """P(no failure by step t) just after each of `times`."""
    low: np.ndarray
    high: np.ndarray
    """Pointwise confidence band (scipy's log-log method)."""
    episodes: int
    failures: int
    median: float
    """Step by which half the episodes failed; inf when the curve never reaches 0.5."""

    def at(self, step) -> np.ndarray:
        """Survival probability after the given step(s) (a right-continuous step function)."""
        i = np.searchsorted(self.times, np.asarray(step), side="right")
        return np.concatenate([[1.0], self.probability])[i]


@dataclass(frozen=True)
class PairedComparison:
    """Edited against baseline on the same seeds."""

    n: int
    mean_difference: Estimate
    """Mean of edited - baseline, with a bootstrap (BCa) interval."""
    median_difference: float
    wilcoxon_statistic: float
    p_wilcoxon: float
    """Two-sided Wilcoxon signed-rank p-value (zero differences dropped; 1.0 if all are zero)."""
    p_permutation: float
    """Two-sided paired permutation p-value of the mean difference (exact up to 13 pairs, 2^13 sign patterns; a
    Monte Carlo estimate over 9999 resamples beyond)."""
    rank_biserial: float
    """Matched-pairs rank-biserial correlation in [-1, 1]: (R+ - R-) / (R+ + R-) over nonzero differences."""
    cohens_dz: float
    """Mean difference over the standard deviation of the differences (Cohen's d_z); 0 if all equal."""


def scipy_rng(seed: int) -> dict:
    """scipy's seeding keyword for a seeded generator: `rng` from scipy 1.15, `random_state` before."""
    import inspect

    name = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def _as_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        raise SurgeryError(f"{name} is empty; need at least one value")
    if not np.all(np.isfinite(a)):
        raise SurgeryError(f"{name} has non-finite values")
    return a


# Resampling tests hold batch x n numbers at once: scipy's default (every resample at once, and BCa's
# n x n jackknife) needs 160 KB per episode, 16 GB at 100,000 episodes. A batch keeps it near 64 MB.
RESAMPLE_BUDGET = 1 << 23


def _batch(n: int) -> int:
    """Resamples per batch for a sample of n: about RESAMPLE_BUDGET numbers held at once."""
    return max(1, RESAMPLE_BUDGET // max(n, 1))


def mean_ci(x, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0, method: str = "BCa") -> Estimate:
    """Mean with a bootstrap confidence interval (scipy.stats.bootstrap)."""
    level(confidence, "confidence")
    integer(n_resamples, "n_resamples", low=1)
    one_of(method, "method", BOOTSTRAP_METHODS)
    a = _as_1d(x, "x")
    mean = float(a.mean())
    if a.size < 2 or np.all(a == a[0]):
        return Estimate(mean, mean, mean, confidence)  # no spread: the bootstrap distribution is a point
    res = stats.bootstrap((a,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method=method, batch=_batch(a.size), **scipy_rng(seed))
    low, high = res.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerates on tiny or lumpy samples
        res = stats.bootstrap((a,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                              method="percentile", batch=_batch(a.size), **scipy_rng(seed))
        low, high = res.confidence_interval
    return Estimate(mean, float(low), float(high), confidence)


def mean_ci_t(x, confidence: float = 0.95) -> Estimate:
    """Mean with Student's t interval: exact for normal data at any n, where the bootstrap is not.

    Why not the bootstrap at small n: its endpoints stay inside the range of the data, so with 6 pairs at
    the 99.8% an atlas's first look asks for, its interval missed 4.7% of normal samples (tests/test_stats.py).
    For skewed data (rare falls) no interval from a few points covers as stated; this one is at least exact
    for the normal part.
    """
    level(confidence, "confidence")
    a = _as_1d(x, "x")
    mean = float(a.mean())
    if a.size < 2:
        return Estimate(mean, -math.inf, math.inf, confidence)  # one point bounds nothing
    half = float(stats.t.isf((1 - confidence) / 2, a.size - 1)) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return Estimate(mean, mean - half, mean + half, confidence)


def summarize(x, confidence: float = 0.95, seed: int = 0) -> dict:
    """n, mean with bootstrap CI, standard deviation, median, min and max of a sample."""
    a = _as_1d(x, "x")
    return {
        "n": int(a.size),
        "mean": mean_ci(a, confidence, seed=seed),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "median": float(np.median(a)),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def failure_rate(failed, confidence: float = 0.95) -> FailureRate:
    """Fraction of failed episodes with a Wilson score interval (scipy.stats.binomtest)."""
    level(confidence, "confidence")
    f = np.asarray(failed, dtype=bool).ravel()
    if f.size == 0:
        raise SurgeryError("failed is empty; need at least one episode")
    k, n = int(f.sum()), int(f.size)
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return FailureRate(k, n, Estimate(k / n, float(ci.low), float(ci.high), confidence))


def survival(lengths, failed, confidence: float = 0.95) -> Survival:
    """Kaplan-Meier curve of the step of failure; episodes that did not fail are right-censored at their length."""
    t = _as_1d(lengths, "lengths")
    f = np.asarray(failed, dtype=bool).ravel()
    if f.shape != t.shape:
        raise SurgeryError(f"lengths has {t.size} entries but failed has {f.size}")
    if not f.any():
        empty = np.array([])
        return Survival(empty, empty, empty, empty, int(t.size), 0, float("inf"))
    sf = stats.ecdf(stats.CensoredData(uncensored=t[f], right=t[~f])).sf
    with warnings.catch_warnings():  # the log-log band is undefined where the curve reaches 0 or 1
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = sf.confidence_interval(confidence, method="log-log")
    times = sf.quantiles
    prob = sf.probabilities
    below = np.nonzero(prob <= 0.5)[0]
    median = float(times[below[0]]) if below.size else float("inf")
    low, high = np.nan_to_num(ci.low.evaluate(times), nan=0.0), np.nan_to_num(ci.high.evaluate(times), nan=1.0)
    return Survival(times, prob, low, high, int(t.size), int(f.sum()), median)


def _paired(baseline, edited) -> np.ndarray:
    b, e = _as_1d(baseline, "baseline"), _as_1d(edited, "edited")
    if b.shape != e.shape:
        raise SurgeryError(f"paired samples differ in length: baseline {b.size}, edited {e.size}")
    return e - b


def rank_biserial(d) -> float:
    """Matched-pairs rank-biserial correlation of differences d (Kerby 2014), zeros dropped."""
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def paired_comparison(baseline, edited, confidence: float = 0.95, n_resamples: int = 9999,
                      seed: int = 0) -> PairedComparison:
    """Wilcoxon signed-rank and permutation tests, effect sizes and a bootstrap CI of edited - baseline."""
    d = _paired(baseline, edited)
    if np.all(d == 0):
        p_w, w_stat, p_perm = 1.0, 0.0, 1.0
    else:
        res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        p_w, w_stat = float(res.pvalue), float(res.statistic)
        perm = stats.permutation_test(
            (np.zeros_like(d), d), lambda x, y, axis: np.mean(y - x, axis=axis), vectorized=True,
            permutation_type="samples", n_resamples=n_resamples, alternative="two-sided", batch=_batch(d.size),
            **scipy_rng(seed),
        )
        p_perm = float(perm.pvalue)
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    return PairedComparison(
        n=int(d.size),
        mean_difference=mean_ci(d, confidence, n_resamples, seed),
        median_difference=float(np.median(d)),
        wilcoxon_statistic=w_stat,
        p_wilcoxon=p_w,
        p_permutation=p_perm,
        rank_biserial=rank_biserial(d),
        cohens_dz=float(d.mean() / sd) if sd > 0 else 0.0,
    )


def sign_flip_p(differences, resolution: int = 2048) -> float:
    """Two-sided p of the paired permutation test of the mean, computed exactly for any number of pairs.

    The test `paired_comparison` runs by Monte Carlo (9999 resamples: p >= 1e-4), exact in the
    discretisation below: under the null each difference's sign is a fair coin, and
    P(|sum s_i d_i| >= |sum d_i|) is a subset-sum distribution. Each |d_i| is floored to a grid of
    step delta = sum|d| / (n * resolution), whose distribution a dynamic programme counts exactly;
    the floors lose E = sum of remainders < n * delta, so the threshold is lowered by E:

        P(|sum s_i d_i| >= t) <= P(|delta * sum s_i floor(|d_i| / delta)| >= t - E)

    The result is never below the exact p (a valid p-value) and above it by at most the mass
    within sum|d| / resolution of the threshold. Integer differences (CartPole returns) use
    delta = 1: exact. Smallest value 2^(1-n), for n pairs of one sign. Cost O(n^2 * resolution).
    """
    integer(resolution, "resolution", low=1)
    a = np.abs(_as_1d(differences, "differences"))
    t = abs(float(np.sum(_as_1d(differences, "differences"))))
    total = float(a.sum())
    if t == 0.0 or total == 0.0:
        return 1.0
    n = a.size
    if np.all(a == np.round(a)) and total <= n * resolution:
        delta = 1.0  # integers: the grid is exact
    else:
        delta = total / (n * resolution)
    k = np.floor(a / delta).astype(np.int64)
    lost = float((a - delta * k).sum())
    threshold = (t - lost) / delta
    if threshold <= 0:
        return 1.0
    # dist[x] = P(sum of the k_i whose sign is + equals x); S = 2x - sum k.
    top = int(k.sum())
    dist = np.zeros(top + 1)
    dist[0] = 1.0
    reach = 0
    for ki in k[k > 0]:
        dist[ki:reach + ki + 1] += dist[:reach + 1].copy()  # the copy: the two ranges may overlap
        reach += ki
        dist[:reach + 1] *= 0.5
    # (a zero step is a sign that changes nothing: it leaves dist as it is)
    s = 2.0 * np.arange(top + 1) - top
    # The threshold is a float; a hair below it still counts, so rounding never makes p too small.
    return float(min(1.0, dist[np.abs(s) >= threshold * (1 - 1e-12) - 1e-9].sum()))


def two_sample_p(x, pool, resamples: int = 4000, refine: int = 200_000, near: float = 0.01, seed: int = 0) -> float:
    """Two-sided p of the unpaired permutation test of the mean: x against a pool of the other condition.

    For episodes that do not repeat under a small change (so pairs by seed carry nothing): under the null
    x and the pool are exchangeable, and p = P(|mean of a random len(x)-subset - grand mean| >= observed).
    Monte Carlo, (1 + hits) / (1 + resamples): a valid p-value, never 0. Where it falls below `near` the
    count is redone with `refine` resamples, so that the small p a correction across hundreds of tests
    needs are resolved (down to 1 / (1 + refine)). Deterministic for a seed.
    """
    a, b = _as_1d(x, "x"), _as_1d(pool, "pool")
    integer(resamples, "resamples", low=1), integer(refine, "refine", low=1)
    rng = np.random.default_rng(seed)
    z = np.concatenate([a, b])
    centre = z.mean()
    observed = abs(a.mean() - centre) * (1 - 1e-12) - 1e-9  # a hair below: rounding never makes p too small

    # Chunks of 20,000 resamples (the p of a given seed depends on the chunking), fewer where that would hold
    # more than twice RESAMPLE_BUDGET numbers: a pool of thousands would otherwise take gigabytes per p.
    rows = 20_000 if 20_000 * z.size <= 2 * RESAMPLE_BUDGET else _batch(z.size)

    def hits(n: int) -> int:
        found = done = 0
        while done < n:
            k = min(rows, n - done)
            pick = rng.random((k, z.size)).argpartition(a.size, axis=1)[:, : a.size]  # a uniform subset per row
            found += int(np.sum(np.abs(z[pick].mean(axis=1) - centre) >= observed))
            done += k
        return found

    p = (1 + hits(resamples)) / (1 + resamples)
    return (1 + hits(refine)) / (1 + refine) if p < near else p


def welch_ci(reference, x, confidence: float = 0.95) -> Estimate:
    """mean(reference) - mean(x) with Welch's t interval (unequal variances): the unpaired counterpart of
    `mean_ci_t` on paired differences. Written out (Welch-Satterthwaite degrees of freedom) rather than through
    scipy's ttest_ind, which warns on a constant sample (a pool of CartPole episodes that all last the limit):
    there the interval comes from the other sample alone, and two constant samples give the difference itself."""
    level(confidence, "confidence")
    a, b = _as_1d(reference, "reference"), _as_1d(x, "x")
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Estimate(diff, -math.inf, math.inf, confidence)
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Estimate(diff, diff, diff, confidence)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return Estimate(diff, diff - half, diff + half, confidence)


def unpaired_failures_p(reference_failed, failed) -> float:
    """Two-sided Fisher's exact p that two independent samples fail at different rates (McNemar's unpaired
    counterpart)."""
    a, b = _as_1d(reference_failed, "reference_failed").astype(bool), _as_1d(failed, "failed").astype(bool)
    table = [[int(a.sum()), int((~a).sum())], [int(b.sum()), int((~b).sum())]]
    return float(stats.fisher_exact(table).pvalue)


@dataclass(frozen=True)
class PairedFailures:
    """Exact McNemar test on paired failure indicators (a binomial test on the discordant pairs)."""

    only_edited_failed: int
    only_baseline_failed: int
    p_mcnemar: float


def paired_failures(baseline_failed, edited_failed) -> PairedFailures:
    """Exact McNemar test on paired failure indicators: binomial test on the discordant pairs."""
    b = np.asarray(baseline_failed, dtype=bool).ravel()
    e = np.asarray(edited_failed, dtype=bool).ravel()
    if b.shape != e.shape:
        raise SurgeryError(f"paired samples differ in length: baseline {b.size}, edited {e.size}")
    only_edited, only_baseline = int((e & ~b).sum()), int((b & ~e).sum())
    n = only_edited + only_baseline
    p = float(stats.binomtest(only_edited, n, 0.5).pvalue) if n else 1.0
    return PairedFailures(only_edited, only_baseline, p)


def adjust_pvalues(pvalues, method: str = "holm") -> np.ndarray:
    """Multiple-comparison adjusted p-values for one family of comparisons (see CORRECTIONS).

    The one correction of the project: the alignment analysis, the edit experiments and the atlas all call it.
    """
    if method not in CORRECTIONS:
        raise SurgeryError(f"correction={method!r} is not known; valid: {', '.join(map(repr, CORRECTIONS))}")
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise SurgeryError(f"p-values must be a 1-d array of numbers in [0, 1], got {pvalues!r}")
    m = p.size
    if m == 0 or method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    if method in ("bh", "by"):
        return stats.false_discovery_control(p, method=method)
    # Holm's step-down: the i-th smallest p times (m - i), made monotone, capped at 1.
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def smallest_paired_p(pairs: int, sides: int = 2) -> float:
    """The smallest p any paired test here can give with `pairs` pairs: 2 / 2^pairs two-sided, 1 / 2^pairs one-sided.

    The sign-flip and signed-rank tests reach it when every difference has one sign; McNemar's exact
    test when every pair is discordant one way. No outcome, however extreme, gives less.
    """
    one_of(sides, "sides", (1, 2))
    return min(1.0, sides * 2.0 ** -pairs) if pairs > 0 else 1.0


def smallest_adjusted_p(pairs: int, comparisons: int = 1, correction: str = "holm", sides: int = 2) -> float:
    """The smallest p, after `correction` across `comparisons` tests, that `pairs` pairs each can reach."""
    return float(adjust_pvalues(np.full(max(comparisons, 1), smallest_paired_p(pairs, sides)), correction).min())


def pairs_needed(alpha: float, comparisons: int = 1, correction: str = "holm", sides: int = 2) -> int:
    """The fewest pairs with which a test can be significant at `alpha` after the correction."""
    level(alpha)  # alpha <= 0 would search forever
    integer(comparisons, "comparisons", low=1)
    n = 1
    while smallest_adjusted_p(n, comparisons, correction, sides) >= alpha:  # significant means p < alpha
        n += 1
    return n


def too_few_pairs(pairs: int, alpha: float, comparisons: int = 1, correction: str = "holm",
                  sides: int = 2) -> str | None:
    """Why no outcome of `pairs` pairs can be significant, as a sentence; None when one can.

    Every verdict printed says this instead of "no significant change": with 5 pairs the smallest
    p is 0.0625, so a hopper that fell in 5 of 5 edited episodes is not evidence of no change.
    sides: 2 for a two-sided test (the default), 1 for a one-sided one (smallest p half as large).
    """
    level(alpha)
    best = smallest_adjusted_p(pairs, comparisons, correction, sides)
    if best < alpha:
        return None
    across = "" if comparisons <= 1 else f" after {correction} across {comparisons} comparisons"
    return (f"too few episodes to decide: with {pairs} pairs the smallest attainable p{across} is {best:.3g}, "
            f"not below alpha {alpha:g}; at least {pairs_needed(alpha, comparisons, correction, sides)} episodes "
            "are needed")


@dataclass(frozen=True)
class Comparison:
    """Edited against baseline, paired by episode seed: what `compare` returns."""

    pairs: int
    """Episodes present in both runs (paired by seed)."""
    unpaired_dropped: int
    """Episodes present in one run only, left out."""
    metric: str
    """The record field compared, e.g. "episode_return"."""
    baseline: dict
    """`summarize` of the baseline's metric."""
    edited: dict
    """`summarize` of the edited run's metric."""
    difference: PairedComparison
    """edited - baseline: tests, effect sizes, bootstrap interval."""
    failures: PairedFailures
    """McNemar test on the paired failure indicators."""
    baseline_failure_rate: FailureRate
    edited_failure_rate: FailureRate


def compare(baseline, edited, metric: str = "episode_return", **kwargs) -> Comparison:
    """Paired statistics of two evaluation results on the same seeds (anything with `.records`)."""
    base = {r.seed: r for r in baseline.records}
    edit = {r.seed: r for r in edited.records}
    seeds = sorted(set(base) & set(edit))
    if not seeds:
        raise SurgeryError("the two results share no seeds; evaluate both with the same seed and episodes")
    missing = len(base) + len(edit) - 2 * len(seeds)
    pairs = [(base[s], edit[s]) for s in seeds]
    values = [(getattr(b, metric), getattr(e, metric)) for b, e in pairs]
    if any(v is None for pair in values for v in pair):
        raise SurgeryError(f"metric {metric!r} is missing for some episodes (no D4RL reference for scores?)")
    b_vals, e_vals = np.array(values).T
    return Comparison(
        pairs=len(seeds), unpaired_dropped=missing, metric=metric,
        baseline=summarize(b_vals), edited=summarize(e_vals),
        difference=paired_comparison(b_vals, e_vals, **kwargs),
        failures=paired_failures([b.failed for b, _ in pairs], [e.failed for _, e in pairs]),
        baseline_failure_rate=failure_rate([b.failed for b, _ in pairs]),
        edited_failure_rate=failure_rate([e.failed for _, e in pairs]),
    )
