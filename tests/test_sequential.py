"""The atlas's sequential design: exact sign-flip p-values, error control under optional stopping, power kept."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from surgery import stats
from surgery.errors import SurgeryError
from surgery.experiments.sequential import Design, Sequential, conditional_power, schedule, simulate


def brute_force_p(d, threshold=None) -> float:
    """P(|sum s_i d_i| >= threshold) over all 2^n sign vectors: the definition of the paired permutation p."""
    d = np.asarray(d, float)
    t = abs(d.sum()) if threshold is None else threshold
    sums = np.array(list(itertools.product([-1, 1], repeat=d.size))) @ d
    return float(np.mean(np.abs(sums) >= t - 1e-9 * max(1.0, t)))


@pytest.mark.parametrize("n", [1, 2, 5, 9, 13])
def test_sign_flip_p_is_the_permutation_p_never_below_it(n):
    rng = np.random.default_rng(n)
    for _ in range(6):
        d = rng.normal(rng.normal(), 1.0, n)
        p = stats.sign_flip_p(d)
        exact = brute_force_p(d)
        # Never below the exact p (valid), and no larger than the exact p at a threshold lowered by sum|d| / 2048.
        assert exact - 1e-12 <= p <= brute_force_p(d, abs(d.sum()) - np.abs(d).sum() / 2048 * 1.001) + 1e-12


def test_sign_flip_p_matches_scipy_and_is_exact_on_integers():
    rng = np.random.default_rng(0)
    d = rng.normal(-0.5, 1, 11)
    ref = sps.permutation_test((np.zeros_like(d), d), lambda x, y, axis: np.mean(y - x, axis=axis), vectorized=True,
                               permutation_type="samples", n_resamples=10**5, alternative="two-sided")
    assert stats.sign_flip_p(d) == pytest.approx(ref.pvalue, abs=1e-3)
    ints = np.array([3, -1, 2, 0, 5, -7, 4, 4, 1])
    assert stats.sign_flip_p(ints) == brute_force_p(ints)  # CartPole returns are integers: no discretisation
    assert stats.sign_flip_p(-np.ones(30)) == 2.0 ** -29  # one sign throughout: the smallest p
    assert stats.sign_flip_p(np.zeros(5)) == 1.0


def test_schedule_and_design_checks():
    assert schedule(50, (0.2, 0.5, 1.0)) == (10, 25, 50)
    assert schedule(30, (1 / 3, 2 / 3, 1)) == (10, 20, 30)
    for bad in ((0.5, 0.2, 1.0), (0.2, 0.5), (0.0, 1.0)):
        with pytest.raises(ValueError, match="increasing fractions"):
            schedule(50, bad)
    with pytest.raises(ValueError, match="same episode"):
        schedule(3, (0.2, 0.3, 1.0))
    with pytest.raises(ValueError, match="futility"):
        Design((5, 10), 3, futility=1.5)
    assert Design((10, 25, 50), 768).reachable() and not Design((3, 6, 10), 768).reachable()


def test_conditional_power_is_the_brownian_projection():
    # At t = 1 it is the test itself; at the start with no signal it is small; it rises with |z|.
    assert conditional_power(5.0, 1.0, 4.0) == 1.0 and conditional_power(3.0, 1.0, 4.0) == 0.0
    cp = [conditional_power(z, 0.25, 3.0) for z in (0.0, 1.0, 2.0, 3.0)]
    assert cp == sorted(cp) and cp[0] < 0.01 and cp[-1] > 0.9
    # By simulation: Brownian motion with drift z/sqrt(t) * ... continued from B(t) = z sqrt(t).
    rng = np.random.default_rng(0)
    z, t, target = 1.5, 0.3, 2.5
    b = z * np.sqrt(t)
    final = b + b / t * (1 - t) + rng.normal(0, np.sqrt(1 - t), 200_000)
    assert conditional_power(z, t, target) == pytest.approx(np.mean(np.abs(final) >= target), abs=0.005)


def _null_differences(rng, m, n, kind):
    """Paired differences against one shared baseline, symmetric under the null, as integers (returns)."""
    if kind == "normal":
        base, edited = rng.normal(0, 20, n), rng.normal(0, 20, (m, n))
    else:  # heavy tails and bimodal: some episodes fall, most do not
        base = np.where(rng.random(n) < 0.3, rng.normal(-300, 30, n), rng.standard_t(2, n) * 10)
        edited = np.where(rng.random((m, n)) < 0.3, rng.normal(-300, 30, (m, n)), rng.standard_t(2, (m, n)) * 10)
    return np.round(edited) - np.round(base)


@pytest.mark.parametrize("kind", ["normal", "heavy"])
def test_family_wise_error_under_the_null_with_a_shared_baseline(kind):
    """(a) No edit does anything: the chance of any rejection stays at alpha (Monte Carlo error shown)."""
    rng = np.random.default_rng(1)
    m, reps, alpha = 8, 250, 0.2
    design = Design(schedule(24, (0.25, 0.5, 1.0)), m, alpha=alpha)
    any_rejected, naive_errors, p_star = 0, 0, []
    for _ in range(reps):
        D = _null_differences(rng, m, 24, kind)
        sim = simulate(D, design)
        any_rejected += sim.rejected.any()
        p_star.extend(sim.p_final)
        # The same looks without the factor K (min over looks taken at face value) must be anti-conservative,
        # so this test could see a broken correction.
        seq = Sequential(Design(design.looks, m, alpha=alpha, futility=0.0))
        for k, n in enumerate(design.looks):
            seq.look(k, {e: D[e, :n] for e in seq.open()})
        naive_errors += sum(min(t.p) <= 0.05 for t in seq.tracks)
    se = np.sqrt(alpha * (1 - alpha) / reps)
    assert any_rejected / reps <= alpha + 3 * se
    # Each p* is a valid p-value: P(p* <= u) <= u (Monte Carlo error: reps * m draws, dependent via the baseline).
    p_star = np.array(p_star)
    for u in (0.05, 0.1, 0.2):
        assert np.mean(p_star <= u) <= u + 4 * np.sqrt(u / reps)
    assert naive_errors / (reps * m) > 0.05 + 4 * np.sqrt(0.05 / (reps * m))


def test_planted_effects_are_found_early_and_nulls_stop_early():
    """(b) Five edits with large shifts among 40: all rejected, mostly at the second look; the rest cost little."""
    rng = np.random.default_rng(2)
    m, n = 40, 50
    design = Design(schedule(n, (0.2, 0.5, 1.0)), m)
    D = _null_differences(rng, m, n, "normal")
    planted = [3, 11, 17, 25, 38]
    D[planted] -= 60  # three baseline standard deviations of a paired difference
    sim = simulate(D, design)
    assert set(np.flatnonzero(sim.rejected)) == set(planted)
    assert all(sim.stopped[e] == "efficacy" and sim.pairs[e] == 25 for e in planted)
    nulls = np.setdiff1d(np.arange(m), planted)
    assert sim.pairs[nulls].mean() < 0.4 * n and np.mean(sim.stopped[nulls] == "futility") > 0.8


def test_futility_costs_little_power_on_moderate_effects():
    """The price of stopping early: power against a fixed design of N pairs, effects at the edge of detection."""
    rng = np.random.default_rng(3)
    m, n, reps = 20, 30, 60
    seq_design = Design(schedule(n, (0.2, 0.5, 1.0)), m)
    fixed = Design((n,), m)
    found_seq = found_fixed = 0
    for _ in range(reps):
        D = _null_differences(rng, m, n, "normal")
        D[:5] -= 28 * np.array([0.8, 1.0, 1.2, 1.4, 1.6])[:, None]  # effect sizes 0.8..1.6 sd per pair
        found_seq += simulate(D, seq_design).rejected[:5].sum()
        found_fixed += simulate(D, fixed).rejected[:5].sum()
    power_seq, power_fixed = found_seq / (5 * reps), found_fixed / (5 * reps)
    assert power_fixed > 0.6 and power_seq >= power_fixed - 0.1


def test_looks_must_come_in_order_with_the_right_number_of_pairs():
    seq = Sequential(Design((2, 4), 2))
    with pytest.raises(ValueError, match="expected 2 paired differences"):
        seq.look(0, {0: [1.0], 1: [1.0, 2.0]})
    seq = Sequential(Design((2, 4), 1))
    with pytest.raises(ValueError, match="out of order"):
        seq.look(1, {0: [1.0, 2.0, 3.0, 4.0]})


def test_futility_needs_both_the_mean_and_the_ranks_to_give_up():
    """One outlier baseline episode must not stop a clear effect; rare catastrophes must not look weak."""
    design = Design((6, 15, 30), edits=4)
    t = 6 / 30
    outlier = np.array([-250.0] * 5 + [900.0])  # a clear drop, and one baseline episode that went wrong
    rare = np.array([0.5, -0.3, -2500.0, 0.2, -0.4, 0.1])  # nothing, except one episode that fell
    from surgery.experiments.sequential import _z, _z_rank

    assert conditional_power(_z(outlier), t, design.z_target) < 0.1 <= conditional_power(_z_rank(outlier), t,
                                                                                             design.z_target)
    assert conditional_power(_z_rank(rare), t, design.z_target) < 0.1 <= conditional_power(_z(rare), t,
                                                                                           design.z_target)
    seq = Sequential(design)
    assert seq.look(0, {0: outlier, 1: rare, 2: np.zeros(6), 3: -outlier}) == {
        0: "continue", 1: "continue", 2: "futility", 3: "continue"}



def _flip_world(rng, m, n, damaging, drop, flips=0.02):
    """HalfCheetah-like returns: about 5800 +- 100, and `flips` of episodes flip over (about 0). The baseline's
    episode 4 flips, inside the first look (as in the HalfCheetah twin's atlas); `damaging` edits lower every
    return by `drop`."""
    def play(shape):
        r = rng.normal(5800, 100, shape)
        return np.where(rng.random(shape) < flips, rng.normal(0, 300, shape), r)

    base = play(n)
    base[4] = 188.0
    edited = play((m, n))
    edited[:damaging] -= drop
    return base, np.round(edited) - np.round(base)


def test_a_baseline_catastrophe_in_the_first_look_does_not_stop_real_damage():
    """(e) One flipped baseline episode among the first 6 pairs adds the same +5600 to every edit's differences,
    cancelling a drop of 1000 on the other 5: judged with it, futility stops most damaging edits at once; judged
    without it (typical_pairs), all are found, and nothing else. Only stopping changes: where an edit reached the
    same looks either way, its p* is the same."""
    from surgery.experiments.sequential import typical_pairs

    rng = np.random.default_rng(0)
    design = Design(schedule(30, (0.2, 0.5, 1.0)), edits=100, alpha=0.05)
    base, D = _flip_world(rng, 100, 30, damaging=10, drop=1000.0)
    assert list(np.flatnonzero(~typical_pairs(base[:6]))) == [4]
    blind, robust = simulate(D, design), simulate(D, design, baseline=base)
    assert (blind.stopped[:10] == "futility").sum() >= 5 and blind.rejected[:10].sum() <= 5
    assert robust.rejected[:10].all() and not robust.rejected[10:].any()
    same = blind.pairs == robust.pairs
    assert same.any() and np.array_equal(blind.p_final[same], robust.p_final[same])


def test_family_wise_error_holds_with_a_catastrophic_baseline():
    """(a') The null again, with the baseline-aware futility of the atlas and a baseline that flips."""
    rng = np.random.default_rng(4)
    m, reps, alpha = 8, 200, 0.2
    design = Design(schedule(24, (0.25, 0.5, 1.0)), m, alpha=alpha)
    any_rejected = 0
    for _ in range(reps):
        base, D = _flip_world(rng, m, 24, damaging=0, drop=0.0, flips=0.05)
        any_rejected += simulate(D, design, baseline=base).rejected.any()
    se = np.sqrt(alpha * (1 - alpha) / reps)
    assert any_rejected / reps <= alpha + 3 * se


def test_two_sample_z_against_enumeration_and_scipy():
    """The pooled futility statistics: the mean's z over the exact permutation sd (every subset enumerated),
    the rank z equal to scipy's Mann-Whitney normal approximation (ties corrected), positive where x is higher."""
    from surgery.experiments.sequential import two_sample_z

    rng = np.random.default_rng(3)
    x, pool = rng.normal(1.0, 1, 4), np.round(rng.normal(0, 1, 8), 1)  # rounding: ties in the ranks
    both = np.concatenate([x, pool])
    means = np.array([both[list(c)].mean() for c in itertools.combinations(range(both.size), x.size)])
    z, z_rank = two_sample_z(x, pool)
    assert z == pytest.approx((x.mean() - means.mean()) / means.std())
    ref = sps.mannwhitneyu(x, pool, method="asymptotic", use_continuity=False)
    assert abs(z_rank) == pytest.approx(sps.norm.isf(ref.pvalue / 2)) and z > 0 and z_rank > 0
    assert two_sample_z(-x, pool)[0] < 0
    assert two_sample_z(np.ones(3), np.ones(5)) == (0.0, 0.0)  # no spread: no evidence either way


def test_pooled_futility_reads_the_pool_spread_not_its_mean():
    """A null edit whose first episodes avoid HalfCheetah's collapses (as half of the pool's own runs of 6 do):
    against the pool's mean every difference is positive and the paired z says 'strong effect, go on'; the
    two-sample statistics see a typical run, and futility stops it at the first look."""
    from surgery.experiments.sequential import _z, two_sample_z

    rng = np.random.default_rng(0)
    pool = np.where(rng.random(200) < 0.12, rng.normal(1000, 800, 200), rng.normal(5800, 100, 200))
    x = 5800 + 100 * np.array([-1, -0.5, 0, 0, 0.5, 1])  # a typical run of 6 without a collapse
    assert _z(x - pool.mean()) > 2.4 and max(map(abs, two_sample_z(x, pool))) < 1.2
    design = Design((6, 15, 30), 384, futility=0.1)
    seq = Sequential(design)
    seq.tracks = seq.tracks[:1]
    assert seq.look(0, {0: x}, p_values={0: stats.two_sample_p(x, pool, seed=0)}, pool=pool) == {0: "futility"}
    with pytest.raises(SurgeryError, match="two-sample p_values"):
        Sequential(design).look(0, {0: x}, pool=pool)
