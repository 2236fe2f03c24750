"""The statistics `validate` adds: Spearman with a CI, partial Spearman, and the verdict's criteria."""
from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from surgery.experiments.correlation import Correlation, partial_spearman, spearman
from surgery.experiments.settings import ValidateSettings
from surgery.experiments.verdict import judge


def test_spearman_matches_scipy_with_fisher_interval_and_exact_permutation_p():
    x = np.array([0.1, 0.5, 0.3, 0.9, 0.7, 0.2])
    y = np.array([1.0, 3.0, 2.5, 9.0, 4.0, 0.5])
    c = spearman(x, y)
    rho = stats.spearmanr(x, y).statistic
    assert c.rho == pytest.approx(rho) and c.n == 6
    half = 1.959963984540054 * math.sqrt(1.06 / 3)  # Fieller, Hartley and Pearson's variance
    assert (c.low, c.high) == pytest.approx((math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half)))
    perms = [stats.spearmanr(x, np.array(p)).statistic for p in itertools.permutations(y)]  # all 720 pairings
    assert c.p == pytest.approx(np.mean(np.abs(perms) >= abs(rho) - 1e-12))
    boot = spearman(x, y, method="bootstrap")
    assert boot.rho == c.rho and -1 <= boot.low <= boot.high <= 1


def test_spearman_of_constant_or_tiny_samples_is_undefined():
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]).rho)
    assert math.isnan(spearman([1, 2], [1, 2]).rho)
    assert spearman([1, 2, 3], [5, 5, 5]).describe() == \
        "Spearman rho undefined (fewer than 3 points, or one side is the same for all)"
    assert spearman([1, 2, 3, 4, 5], [1, 2, 3, 5, 4]).describe("rho").startswith("rho +0.90 [")
    with pytest.raises(ValueError, match="method"):
        spearman([1, 2, 3, 4], [1, 3, 2, 4], method="kendall")


def test_partial_spearman_is_the_correlation_of_rank_residuals():
    rng = np.random.default_rng(3)
    z = rng.normal(size=40)
    x, y = z + rng.normal(size=40), 2 * z + rng.normal(size=40)
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))

    def residual(a):
        return a - np.polyval(np.polyfit(rz, a, 1), rz)

    reference = stats.pearsonr(residual(rx), residual(ry)).statistic
    c = partial_spearman(x, y, z)
    assert c.rho == pytest.approx(reference) and c.low < c.rho < c.high


def _validation(aligned, controls, rho_low, aligned_significant=True, episodes=200):
    """A stand-in Validation: per edit (damage, corrected p) for the aligned and the control edits."""
    def outcome(group, damage, p):
        target = SimpleNamespace(group=group, significant=aligned_significant and group == "aligned", p_adj=1e-9)
        return SimpleNamespace(target=target, damage=SimpleNamespace(value=damage), p_adj=p, failure_increase=0.0)

    outcomes = [outcome("aligned", d, p) for d, p in aligned] + [outcome("control_same", d, p) for d, p in controls]
    return SimpleNamespace(
        outcomes=outcomes, settings=ValidateSettings(alpha=0.05, correction="holm", embedding="action_out",
                                                     episodes=episodes),
        correlation=Correlation(0.8, rho_low, 0.95, 0.01, len(outcomes), "fisher-z"),
        group=lambda name: [o for o in outcomes if o.target.group == name],
    )


@pytest.mark.parametrize("aligned, controls, rho_low, outcome", [
    ([(900, 1e-9), (800, 1e-6)], [(0, 1.0), (5, 0.6), (300, 1e-3)], 0.2, "supported"),
    ([(900, 1e-9), (800, 1e-6)], [(0, 1.0), (5, 0.6), (300, 1e-3)], -0.1, "partly supported"),
    ([(900, 1e-9), (800, 1e-6)], [(600, 1e-5), (700, 1e-6), (0, 1.0)], -0.1, "not supported"),
    ([(10, 0.4), (800, 1e-6), (0, 1.0)], [(0, 1.0), (0, 1.0)], 0.2, "not supported"),  # 1 of 3 aligned hurt
])
def test_verdict_criteria(aligned, controls, rho_low, outcome):
    v = judge(_validation(aligned, controls, rho_low))
    assert v.outcome == outcome
    assert v.sentence.endswith(outcome.upper()) and v.sentence.startswith("aligned edits: mean damage")


def test_nothing_aligned_beyond_chance_is_not_testable():
    v = judge(_validation([(900, 1e-9)], [(0, 1.0)], 0.2, aligned_significant=False))
    assert v.outcome == "not testable" and "beyond chance" in v.sentence


@pytest.mark.parametrize("pairs", [1, 2, 5, 9])
def test_smallest_paired_p_is_what_the_tests_give_for_the_most_extreme_outcome(pairs):
    """Every pair one way: scipy's exact Wilcoxon and binomial (McNemar) tests, and the sign-flip test."""
    from surgery.stats import sign_flip_p, smallest_paired_p

    d = np.arange(1.0, pairs + 1)
    assert smallest_paired_p(pairs) == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)
    assert smallest_paired_p(pairs) == pytest.approx(stats.binomtest(pairs, pairs, 0.5).pvalue)
    assert smallest_paired_p(pairs) == pytest.approx(sign_flip_p(d))
    one_sided = stats.binomtest(pairs, pairs, 0.5, alternative="greater").pvalue
    assert smallest_paired_p(pairs, sides=1) == pytest.approx(one_sided)


@pytest.mark.parametrize("comparisons, correction", [(1, "holm"), (15, "holm"), (15, "bh"), (768, "bonferroni")])
def test_too_few_pairs_names_the_smallest_p_and_the_pairs_needed(comparisons, correction):
    from surgery.stats import adjust_pvalues, pairs_needed, smallest_paired_p, too_few_pairs

    n = pairs_needed(0.05, comparisons, correction)
    best = adjust_pvalues(np.full(comparisons, smallest_paired_p(n)), correction).min()
    worse = adjust_pvalues(np.full(comparisons, smallest_paired_p(n - 1)), correction).min()
    assert best < 0.05 <= worse  # n pairs can decide, n - 1 cannot
    assert too_few_pairs(n, 0.05, comparisons, correction) is None
    why = too_few_pairs(n - 1, 0.05, comparisons, correction)
    assert why.startswith("too few episodes to decide") and f"at least {n} episodes" in why
    assert f"{worse:.3g}" in why


def test_a_one_sided_test_decides_with_fewer_pairs():
    """laser tests "does the cut raise the return": 6 pairs, 2 cuts, Holm: 2^-6 * 2 = 0.031 can be significant."""
    from surgery.stats import pairs_needed, too_few_pairs

    assert too_few_pairs(6, 0.05, 2, "holm", sides=1) is None
    assert too_few_pairs(6, 0.05, 2, "holm").startswith("too few episodes")  # two-sided: 2^-5 * 2 = 0.0625
    assert pairs_needed(0.05, 2, "holm", sides=1) == pairs_needed(0.05, 2, "holm") - 1


def test_five_pairs_cannot_decide_at_005():
    """The issue's case: 5 of 5 falls, return 3326 -> 965, and the smallest p is 0.0625."""
    from surgery.stats import too_few_pairs

    assert too_few_pairs(5, 0.05) == ("too few episodes to decide: with 5 pairs the smallest attainable p is 0.0625, "
                                      "not below alpha 0.05; at least 6 episodes are needed")


def test_a_validation_too_small_to_decide_says_so_instead_of_not_supported():
    v = judge(_validation([(900, 0.9), (800, 0.9)], [(0, 1.0), (5, 1.0)], -0.1, episodes=5))
    assert v.outcome == "too few episodes" and "TOO FEW EPISODES" in v.sentence
    assert "at least 8 episodes are needed" in v.sentence  # Holm across 4 edits: 4 * 2^(1-n) < 0.05
