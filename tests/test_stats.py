"""surgery.stats against textbook values and brute-force computations."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sps

from surgery import stats


def test_wilson_interval_matches_the_formula():
    # Wilson (1927): (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), written out independently.
    for k, n in [(0, 10), (3, 10), (81, 263), (50, 50)]:
        z = sps.norm.ppf(0.975)
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        fr = stats.failure_rate([True] * k + [False] * (n - k))
        assert (fr.failures, fr.episodes) == (k, n)
        assert fr.rate.value == pytest.approx(p)
        assert fr.rate.low == pytest.approx(max(0.0, centre - half), abs=1e-12)
        assert fr.rate.high == pytest.approx(min(1.0, centre + half), abs=1e-12)
    # Newcombe (1998), table I: 81/263 -> 0.2553 to 0.3662.
    fr = stats.failure_rate([True] * 81 + [False] * 182)
    assert (round(fr.rate.low, 4), round(fr.rate.high, 4)) == (0.2553, 0.3662)


def test_kaplan_meier_matches_the_6mp_textbook_example():
    # Freireich et al. (1963) 6-MP arm, as in Kleinbaum & Klein, "Survival Analysis", ch. 2 (+ = censored).
    data = "6 6 6 6+ 7 9+ 10 10+ 11+ 13 16 17+ 19+ 20+ 22 23 25+ 32+ 32+ 34+ 35+".split()
    t = np.array([float(x.rstrip("+")) for x in data])
    failed = np.array([not x.endswith("+") for x in data])
    km = stats.survival(t, failed)
    expected = {6: 0.8571, 7: 0.8067, 10: 0.7529, 13: 0.6902, 16: 0.6275, 22: 0.5378, 23: 0.4482}
    for time, s in expected.items():
        assert km.at(time) == pytest.approx(s, abs=1e-4)
    assert km.at(5.9) == 1.0 and km.at(40) == pytest.approx(0.4482, abs=1e-4)
    assert km.median == 23
    assert np.all(km.low <= km.probability + 1e-12) and np.all(km.probability <= km.high + 1e-12)
    assert (km.episodes, km.failures) == (21, 9)


def test_kaplan_meier_equals_product_limit_by_hand():
    rng = np.random.default_rng(0)
    t = rng.integers(1, 50, 80).astype(float)
    failed = rng.random(80) < 0.6
    km = stats.survival(t, failed)
    s = 1.0
    for time in np.unique(t):
        at_risk = np.sum(t >= time)
        deaths = np.sum((t == time) & failed)
        s *= 1 - deaths / at_risk
        assert km.at(time) == pytest.approx(s, abs=1e-12)


def test_survival_without_failures_is_flat():
    km = stats.survival([1000, 1000, 1000], [False, False, False])
    assert km.failures == 0 and km.median == float("inf") and km.at(500) == 1.0


def brute_force_signed_rank_p(d):
    """Exact two-sided Wilcoxon p-value by enumerating all 2^n sign assignments (no ties, no zeros)."""
    ranks = sps.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    centre = ranks.sum() / 2
    extreme = 0
    for signs in itertools.product([0, 1], repeat=len(d)):
        t_plus = ranks[np.array(signs, bool)].sum()
        extreme += abs(t_plus - centre) >= abs(observed - centre) - 1e-9
    return extreme / 2 ** len(d)


def brute_force_permutation_p(d):
    """Exact two-sided paired permutation p-value of the mean difference over all sign flips."""
    observed = abs(d.mean())
    count = 0
    for signs in itertools.product([-1, 1], repeat=len(d)):
        count += abs((d * np.array(signs)).mean()) >= observed - 1e-12
    return count / 2 ** len(d)


def test_paired_tests_match_brute_force_enumeration():
    rng = np.random.default_rng(1)
    base = rng.normal(100, 10, 11)
    edited = base + rng.normal(-6, 8, 11)
    d = edited - base
    res = stats.paired_comparison(base, edited)
    assert res.p_wilcoxon == pytest.approx(brute_force_signed_rank_p(d), rel=1e-9)
    assert res.p_permutation == pytest.approx(brute_force_permutation_p(d), rel=1e-9)
    ranks = sps.rankdata(np.abs(d))
    assert res.rank_biserial == pytest.approx((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())
    assert res.cohens_dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert res.mean_difference.low < d.mean() < res.mean_difference.high
    assert res.n == 11 and res.median_difference == pytest.approx(np.median(d))


def test_rank_biserial_textbook_value():
    # Kerby (2014): 9 of 10 pairs favour the treatment and the one against has rank 1 ->
    # r = (54 - 1) / 55 = 0.9636.
    d = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], float)
    d[0] = -1
    assert stats.rank_biserial(d) == pytest.approx(53 / 55)


def test_identical_runs_are_not_different():
    x = np.arange(20.0)
    res = stats.paired_comparison(x, x)
    assert res.p_wilcoxon == 1.0 and res.p_permutation == 1.0 and res.rank_biserial == 0.0 and res.cohens_dz == 0.0
    assert res.mean_difference.low == res.mean_difference.high == 0.0


def test_a_large_shift_is_significant_and_noise_is_not():
    rng = np.random.default_rng(2)
    base = rng.normal(3000, 200, 100)
    assert stats.paired_comparison(base, base - 1500 + rng.normal(0, 200, 100)).p_wilcoxon < 1e-10
    noise = stats.paired_comparison(base, base + rng.normal(0, 200, 100))
    assert noise.p_wilcoxon > 0.01 and abs(noise.rank_biserial) < 0.3


def test_bootstrap_ci_is_close_to_the_t_interval_and_deterministic():
    rng = np.random.default_rng(3)
    x = rng.normal(10, 2, 400)
    est = stats.mean_ci(x, seed=0)
    t_low, t_high = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert est.low == pytest.approx(t_low, abs=0.05) and est.high == pytest.approx(t_high, abs=0.05)
    assert stats.mean_ci(x, seed=0) == est
    s = stats.summarize(x)
    assert s["n"] == 400 and s["mean"] == est and s["min"] == x.min()


def test_t_interval_holds_its_level_at_six_pairs_where_the_bootstrap_does_not():
    """The atlas's first look: 6 pairs at 99.8%. Miss rates over normal samples of true mean 0."""
    rng = np.random.default_rng(0)
    conf, reps = 0.998, 3000
    x = rng.normal(0, 1, (reps, 6))
    t = [stats.mean_ci_t(row, conf) for row in x]
    t_miss = np.mean([not (e.low <= 0 <= e.high) for e in t])
    low, high = sps.t.interval(conf, 5, loc=x[0].mean(), scale=sps.sem(x[0]))  # scipy's own t interval
    assert (t[0].low, t[0].high) == (pytest.approx(low), pytest.approx(high))
    assert t_miss <= 0.002 + 3 * np.sqrt(0.002 * 0.998 / reps)
    boot_miss = np.mean([not (e.low <= 0 <= e.high) for e in (stats.mean_ci(row, conf, n_resamples=1999)
                                                                  for row in x[:400])])
    assert boot_miss > 0.02  # measured 4.7% (a review, 1500 samples): why the atlas does not use it
    assert stats.mean_ci_t([3.0], 0.95).low == -np.inf


def test_benjamini_hochberg_matches_its_definition_and_r():
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "BH") -> all 0.05
    assert np.allclose(stats.adjust_pvalues([0.01, 0.02, 0.03, 0.04, 0.05], "bh"), 0.05)
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 0.2, 30) ** 2
    m = len(p)
    order = np.argsort(p)
    # Definition: adjusted p_(i) = min over j >= i of m p_(j) / j, capped at 1.
    want = np.empty(m)
    for rank, i in enumerate(order, start=1):
        want[i] = min(1.0, min(m * p[order[j - 1]] / j for j in range(rank, m + 1)))
    assert np.allclose(stats.adjust_pvalues(p, "bh"), want)


def test_holm_matches_r_and_the_step_down_procedure():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") -> 0.03 0.06 0.06 0.02
    assert np.allclose(stats.adjust_pvalues([0.01, 0.04, 0.03, 0.005], "holm"), [0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 0.1, 12) ** 1.5
    adjusted = stats.adjust_pvalues(p, "holm")
    for alpha in (0.01, 0.05, 0.1):
        # Holm's step-down: walk the sorted p-values, reject while p_(i) <= alpha / (m - i + 1).
        rejected = set()
        for i, idx in enumerate(np.argsort(p)):
            if p[idx] > alpha / (len(p) - i):
                break
            rejected.add(idx)
        assert rejected == set(np.nonzero(adjusted <= alpha)[0])


def test_adjust_rejects_bad_input():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        stats.adjust_pvalues([0.1, 1.5])
    with pytest.raises(ValueError, match="valid: 'holm', 'bonferroni', 'bh', 'by', 'none'"):
        stats.adjust_pvalues([0.1], "fdr")


def test_one_correction_for_the_whole_project():
    """The public function defaults to what the analysis uses (Holm); there is no second spelling."""
    from surgery.analysis import chance

    p = [0.01, 0.04, 0.03, 0.005]
    assert np.allclose(stats.adjust_pvalues(p), stats.adjust_pvalues(p, "holm"))
    assert not hasattr(chance, "correct") and not hasattr(chance, "CORRECTIONS")


def test_mcnemar_is_a_binomial_test_on_discordant_pairs():
    base = np.array([0] * 30 + [1] * 10, bool)
    edited = base.copy()
    edited[:12] = True  # 12 pairs fail only when edited
    edited[30:32] = False  # 2 pairs fail only at baseline
    res = stats.paired_failures(base, edited)
    assert (res.only_edited_failed, res.only_baseline_failed) == (12, 2)
    # Exact two-sided binomial by hand: P(X <= 2) + P(X >= 12), X ~ Bin(14, 1/2).
    want = sum(sps.binom.pmf(k, 14, 0.5) for k in list(range(0, 3)) + list(range(12, 15)))
    assert res.p_mcnemar == pytest.approx(want)


def test_compare_pairs_records_by_seed():
    def rec(seed, ret, failed):
        return SimpleNamespace(seed=seed, episode_return=ret, failed=failed)

    base = SimpleNamespace(records=[rec(s, 100.0 + s, False) for s in range(12)])
    edited = SimpleNamespace(records=[rec(s, 50.0 + s, s % 2 == 0) for s in reversed(range(2, 14))])
    out = stats.compare(base, edited)
    assert out.pairs == 10 and out.unpaired_dropped == 4
    assert out.difference.mean_difference.value == pytest.approx(-50.0)
    assert out.edited_failure_rate.failures == 5
    with pytest.raises(ValueError, match="share no seeds"):
        stats.compare(base, SimpleNamespace(records=[rec(99, 1.0, False)]))


def test_two_sample_p_against_every_subset(monkeypatch):
    """The unpaired permutation p against full enumeration of the subsets (9 of 9+13: 497,420 of them), with the
    usual chunks of resamples and with the small chunks a large pool gets (memory held near RESAMPLE_BUDGET)."""
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.8, 2.5):
        x, pool = rng.normal(shift, 1, 9), rng.normal(0, 1, 13)
        z = np.concatenate([x, pool])
        means = np.array([z[list(c)].mean() for c in itertools.combinations(range(z.size), x.size)])
        exact = float(np.mean(np.abs(means - z.mean()) >= abs(x.mean() - z.mean()) - 1e-12))
        for budget in (stats.RESAMPLE_BUDGET, 22 * 150):  # the second: chunks of 150 resamples
            monkeypatch.setattr(stats, "RESAMPLE_BUDGET", budget)
            p = stats.two_sample_p(x, pool, resamples=4000, refine=100_000, seed=1)
            # within 4 Monte Carlo errors of the coarser count (a p near 0.01 may or may not have been refined)
            assert abs(p - exact) <= 4 * np.sqrt(exact * (1 - exact) / 4000) + 2 / 4000, (shift, budget, p, exact)
        monkeypatch.undo()
    # Refined where small: the floor is 1 / (1 + refine), not 1 / (1 + resamples).
    assert stats.two_sample_p(np.full(5, 10.0), np.zeros(400), resamples=100, refine=50_000) == 1 / 50_001


def test_two_sample_p_holds_its_level_under_the_null():
    """Bimodal returns (12% collapses), x and pool from one distribution: p <= 0.05 in about 5% of trials."""
    rng = np.random.default_rng(0)

    def draw(n):
        return np.where(rng.random(n) < 0.12, rng.normal(1000, 800, n), rng.normal(5800, 100, n))

    ps = np.array([stats.two_sample_p(draw(30), draw(200), resamples=400, seed=i) for i in range(300)])
    assert np.mean(ps <= 0.05) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300)


def test_welch_interval_and_unpaired_failures_against_scipy():
    rng = np.random.default_rng(5)
    a, b = rng.normal(5400, 900, 200), rng.normal(5000, 300, 12)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.99)
    mine = stats.welch_ci(a, b, confidence=0.99)
    assert (mine.value, mine.low, mine.high) == pytest.approx((a.mean() - b.mean(), ci.low, ci.high))
    # A constant pool (CartPole: every episode lasts the limit): the interval is the other sample's t interval.
    one = stats.welch_ci(np.full(40, 60.0), np.array([60.0, 9.0, 60.0, 8.0, 60.0, 10.0]), confidence=0.95)
    other = stats.mean_ci_t(60.0 - np.array([60.0, 9.0, 60.0, 8.0, 60.0, 10.0]), confidence=0.95)
    assert (one.low, one.high) == pytest.approx((other.low, other.high))
    assert stats.welch_ci(np.full(5, 3.0), np.full(4, 1.0)).low == 2.0
    assert stats.unpaired_failures_p([1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 1]) == pytest.approx(
        sps.fisher_exact([[1, 5], [5, 1]]).pvalue)
