"""Chance: exact single-vector laws against closed forms and sampling, Monte Carlo nulls, corrections."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from surgery.analysis import chance
from surgery.stats import adjust_pvalues

pytestmark = pytest.mark.usefixtures("one_thread")


def random_unit(n, d, seed):
    x = np.random.default_rng(seed).normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def correlated_set(n, d, seed, shared=1.5):
    """A non-orthogonal set: every vector shares a common direction (like real embeddings)."""
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.normal(size=(n, d)) + shared * rng.normal(size=(1, d)), dtype=torch.float32)


def test_pair_pvalue_matches_closed_forms():
    c = np.linspace(0, 1, 11)
    # d = 3 (Archimedes): cos is uniform on [-1, 1]; d = 2: the angle is uniform.
    np.testing.assert_allclose(chance.pair_pvalue(c, 3), 1 - c, atol=1e-12)
    np.testing.assert_allclose(chance.pair_pvalue(c, 2), 2 / np.pi * np.arccos(c), atol=1e-12)


@pytest.mark.parametrize("d", [16, 128, 1024])
def test_pair_law_matches_sampling(d):
    e = random_unit(1, d, 0)[0]
    cos = random_unit(20000, d, 1) @ e
    # (cos + 1) / 2 ~ Beta((d-1)/2, (d-1)/2)
    assert stats.kstest(cos, chance.cos_distribution(d).cdf).pvalue > 0.01
    assert abs(np.abs(cos).mean() - chance.abs_cos_mean(d)) < 4 * chance.abs_cos_std(d) / math.sqrt(cos.size)
    for q in (0.9, 0.99):
        t = np.quantile(np.abs(cos), q)
        assert abs(chance.pair_pvalue(t, d) - (1 - q)) < 4 * math.sqrt(q * (1 - q) / cos.size)


def test_typical_cosine_shrinks_like_one_over_sqrt_d():
    for d in (128, 1024, 4096):
        assert chance.abs_cos_mean(d) == pytest.approx(math.sqrt(2 / (math.pi * d)), rel=2 / d)
    assert chance.abs_cos_mean(1024) / chance.abs_cos_mean(4096) == pytest.approx(2.0, rel=1e-3)


def test_threshold_inverts_pvalue():
    for d in (24, 128, 768):
        for p in (0.5, 0.01, 1e-6):
            assert chance.pair_pvalue(chance.pair_threshold(p, d), d) == pytest.approx(p, rel=1e-8)


def test_one_vector_set_is_exact():
    null = chance.null_for(torch.randn(1, 50))
    assert null.exact and null.samples.size == 0
    c = np.array([0.0, 0.1, 0.3, 0.6])
    np.testing.assert_allclose(null.pvalue(c), chance.pair_pvalue(c, 50))
    assert null.mean == pytest.approx(chance.abs_cos_mean(50))


def test_set_null_matches_sampling_and_duplicates_do_not_count_twice():
    E = correlated_set(20, 32, 0)
    null = chance.null_for(E, draws=20000, seed=0)
    # Fresh directions (a different seed) give p-values that are uniform.
    U = torch.tensor(random_unit(4000, 32, 123), dtype=torch.float32)
    En = torch.nn.functional.normalize(E, dim=1)
    stat = (U @ En.T).abs().max(1).values.numpy()
    assert stats.kstest(null.pvalue(stat), "uniform").pvalue > 0.01
    # A set holding one vector twice has one vector's law: the union bound alone would double p.
    twice = chance.null_for(torch.cat([E[:1], E[:1]]), draws=20000, seed=0)
    c = np.array([0.2, 0.3, 0.4])
    np.testing.assert_allclose(twice.pvalue(c), chance.pair_pvalue(c, 32), rtol=0.1)


def test_pvalues_of_random_weight_matrices_are_uniform():
    """Singular vectors of random Gaussian matrices against a fixed, correlated set: p ~ U(0, 1)."""
    d = 64
    E = correlated_set(12, d, 1)
    null = chance.null_for(E, draws=20000, seed=0)
    En = torch.nn.functional.normalize(E.double(), dim=1)
    g = torch.Generator().manual_seed(7)
    W = torch.randn(60, d, 256, generator=g, dtype=torch.float64)
    U = torch.linalg.svd(W, full_matrices=False).U  # all 64 read-side vectors of each
    best = (U.mT @ En.T).abs().amax(-1).flatten().numpy()
    assert stats.kstest(null.pvalue(best), "uniform").pvalue > 0.01
    # The test can fail: scoring the best of 12 labels with one vector's law is far too optimistic.
    assert stats.kstest(chance.pair_pvalue(best, d), "uniform").pvalue < 1e-6


def test_tail_beyond_the_sample_uses_the_union_bound():
    E = correlated_set(8, 128, 2, shared=0.0)
    null = chance.null_for(E, draws=2000, seed=0)
    c = 0.7  # far beyond any of 2000 draws
    assert null.pvalue(c) == pytest.approx(8 * chance.pair_pvalue(c, 128))
    assert null.pvalue(c) < 1 / 2001
    assert null.pvalue(0.0) == 1.0
    for p in (0.3, 1e-3, 1e-9):
        t = null.threshold(p)
        assert null.pvalue(t) <= p * (1 + 1e-9)
        assert null.pvalue(t * 0.98) > p


def test_null_is_reproducible_and_cached():
    E = correlated_set(10, 24, 3)
    a = chance.null_for(E, draws=3000, seed=5)
    assert chance.null_for(E.clone(), draws=3000, seed=5) is a
    chance._NULLS.clear()
    b = chance.null_for(E.clone(), draws=3000, seed=5)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, chance.null_for(E, draws=3000, seed=6).samples)
    # A prefix of a larger draw is the smaller draw: results do not depend on how many were drawn before.
    torch.testing.assert_close(chance.random_directions(5000, 24, 1)[:3000], chance.random_directions(3000, 24, 1))


def test_corrections():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.06 (monotone).
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), [0.04, 0.16, 0.12, 0.02])
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), stats.false_discovery_control(p, method="bh"))
    np.testing.assert_allclose(adjust_pvalues(p, "none"), p)
    with pytest.raises(ValueError, match="valid: 'holm'"):
        adjust_pvalues(p, "fdr")


def test_searched_pvalue():
    assert chance.searched_pvalue(0.01, 1) == pytest.approx(0.01)
    assert chance.searched_pvalue(0.01, 100) == pytest.approx(1 - 0.99 ** 100)
