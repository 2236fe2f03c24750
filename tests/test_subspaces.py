"""Tied singular values: gaps and groups, the subspace score's invariance and chance law, a planted subspace."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import surgery
from surgery.analysis import chance
from surgery.analysis.alignment import alignment
from surgery.analysis.localisation import locate
from surgery.analysis.subspaces import MAX_SIN, perturbation, projection_maxima, ties
from surgery.errors import SurgeryError
from tests.conftest import build
from tests.reference import reference_matrix, reference_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def haar(d, k, seed):
    """A uniformly random d x k orthonormal frame (numpy, float64)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, k)))
    return q * np.sign(np.diag(r))


# ---- gaps and groups ---------------------------------------------------------------------------------
def test_gaps_and_groups_on_a_planted_spectrum():
    S = np.array([10, 9.99, 9.98, 6, 3, 2.999, 1.0])
    t = ties(S, noise=0.01, shape=(1, 1))  # ties closer than 0.01 / (0.5 (1 + 1)) = 0.01 of S_0 = 0.1
    assert t.threshold == pytest.approx(0.01)
    np.testing.assert_allclose(t.rel_gap, [0.001, 0.001, 0.001, 0.3, 0.0001, 0.0001, 0.1999], rtol=1e-9)
    assert t.group.tolist() == [0, 0, 0, 3, 4, 4, 6]
    assert t.size.tolist() == [3, 3, 3, 1, 2, 2, 1]
    assert t.identifiable.tolist() == [False, False, False, True, False, False, True]
    assert t.groups() == [(0, 3, False), (3, 1, False), (4, 2, False), (6, 1, False)]
    # Identifiable is exactly "the typical first-order turn noise / ((sqrt m + sqrt n) gap) is below MAX_SIN".
    np.testing.assert_array_equal(t.identifiable, 0.01 / (2 * t.rel_gap) < MAX_SIN)
    # The coupling of one pair is ||E|| / (sqrt m + sqrt n): a wider weight ties less for the same ||E|| / S_0.
    assert ties(S, 0.01, (128, 512)).threshold == pytest.approx(0.01 / (0.5 * (math.sqrt(128) + math.sqrt(512))))
    assert ties(S, 0.01 * (math.sqrt(128) + math.sqrt(512)) / 2, (128, 512)).group.tolist() == t.group.tolist()
    # A side with a complement: the last triple's gap is to 0; far enough here, too close when small.
    assert ties(S, 0.01, (1, 1), complement=True).rel_gap[-1] == pytest.approx(0.1)
    low = ties(np.array([10, 6, 0.05]), 0.01, (1, 1), complement=True)
    assert low.open.tolist() == [False, False, True] and not low.identifiable[-1]
    # Only the leading triples known (a fast route): the last group is open.
    assert ties(S[:3], 0.01, (1, 1), complete=False).open.tolist() == [True, True, True]
    assert ties(S[:4], 0.01, (1, 1), complete=False).identifiable.tolist() == [False, False, False, False]
    # noise 0 ties only exact equals; more noise ties more.
    assert ties(np.array([3.0, 3.0, 2.0]), 0.0, (1, 1)).size.tolist() == [2, 2, 1]
    assert ties(S, 0.0, (1, 1)).identifiable.all()
    assert ties(S, 0.2, (1, 1)).size.tolist() == [3, 3, 3, 1, 3, 3, 3]


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), np.array([]), np.array([1.0, np.nan]), np.array([[1.0]])])
def test_bad_spectra_are_refused(bad):
    with pytest.raises(SurgeryError, match="descending"):
        ties(bad, 0.01, (1, 1))


def test_bad_noise_is_refused_before_anything_runs():
    with pytest.raises(SurgeryError, match="noise"):
        ties(np.array([2.0, 1.0]), noise=-0.1, shape=(1, 1))
    with pytest.raises(SurgeryError, match="noise"):
        alignment(build("dt"), embeddings="action_out", noise=-1.0)


# ---- the score of a group is the span's -------------------------------------------------------------
def test_projection_maxima_match_numpy_and_ignore_rotations_within_the_span():
    d, n = 20, 30
    E = np.random.default_rng(0).normal(size=(n, d))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    B1, B3 = haar(d, 1, 1).T, haar(d, 3, 2).T
    score, arg = projection_maxima([torch.tensor(B1), torch.tensor(B3)], torch.tensor(E), chunk_elements=50)
    ref = [np.linalg.norm(E @ B.T, axis=1) for B in (B1, B3)]  # [n] per basis
    np.testing.assert_allclose(score, [r.max() for r in ref], atol=1e-12)
    assert arg.tolist() == [int(r.argmax()) for r in ref]
    # A rotation inside the span changes every single vector's cosines, not the span's score.
    R = haar(3, 3, 3)
    turned, _ = projection_maxima([torch.tensor(R.T @ B3)], torch.tensor(E))
    assert abs(turned[0] - score[1]) < 1e-12
    assert np.abs(E @ (R.T @ B3).T - E @ B3.T).max() > 0.1
    # A wide group scored through its complement (the other triples of a basis of R^d) gives the same answer,
    # and a zero label (no direction) never scores, though its complement projection is 0 too.
    Q = haar(d, d, 4).T  # [d, d]: the triples of a full-rank square weight
    Ez = torch.tensor(np.vstack([E, np.zeros((1, d))]))
    wide, wide_arg = projection_maxima([torch.tensor(Q[:15])], Ez)
    via, via_arg = projection_maxima([torch.tensor(Q[15:])], Ez, complement=[True])
    assert abs(wide[0] - via[0]) < 1e-12 and wide_arg[0] == via_arg[0] != n
    whole, _ = projection_maxima([torch.tensor(Q[:0])], Ez, complement=[True])  # a group spanning all of R^d
    assert whole[0] == pytest.approx(1.0, abs=1e-15)


def test_group_scores_in_the_search_pass_match_a_direct_projection_screened_or_not():
    """The search scores groups from its own product: exactly, or from the bf16 screen with a proof and exact
    rescoring. Both equal a float64 projection; chunk boundaries never split a group."""
    from surgery.analysis import cosines

    g = torch.Generator().manual_seed(0)
    E = torch.nn.functional.normalize(torch.randn(5000, 32, generator=g) + 0.5 * torch.randn(1, 32, generator=g), dim=1)
    Q = torch.tensor(haar(32, 32, 5).T, dtype=torch.float32)  # 32 orthonormal directions
    E[17] = torch.nn.functional.normalize(Q[4] + Q[5], dim=0)  # a label inside the span of rows 4-5
    groups = [(0, 3), (4, 2), (9, 5), (20, 12)]
    ref = [np.linalg.norm(E.double().numpy() @ Q[f:f + z].double().numpy().T, axis=1) for f, z in groups]
    for screen in (False, True):
        for chunk in (cosines.CHUNK_ELEMENTS, 7 * 5000):  # one chunk; chunks of ~7 rows, moved to group edges
            old = cosines.CHUNK_ELEMENTS
            cosines.CHUNK_ELEMENTS = chunk
            try:
                ext = cosines.SearchSet(E, screen=screen).extremes(Q, 3, groups=groups)
            finally:
                cosines.CHUNK_ELEMENTS = old
            np.testing.assert_allclose(ext.group_sq.sqrt().numpy(), [r.max() for r in ref], atol=1e-5)
            assert ext.group_idx.tolist() == [int(r.argmax()) for r in ref]
            assert ext.group_idx[1] == 17
            plain = cosines.SearchSet(E, screen=False).extremes(Q, 3)
            assert torch.equal(ext.top_idx, plain.top_idx) and torch.equal(ext.bottom_idx, plain.bottom_idx)
    assert cosines._chunks(32, 7, groups) == [(0, 7), (7, 14), (14, 20), (20, 32)]


def planted_model(S, seed=0):
    """A float64 tiny DT whose block-0 K is U diag(S) V^T with known U (read side) and V."""
    model = build("dt").double()
    a = surgery.wrap(model)
    W = a.mlp_in(0)  # [24, 48]
    U, V = haar(W.shape[0], len(S), seed), haar(W.shape[1], len(S), seed + 1)
    with torch.no_grad():
        W.copy_(torch.tensor(U * np.asarray(S) @ V.T))
    return model, U


def spectrum(tied_at=None, gap=0.0):
    # Neighbours 0.196 apart: 0.039 of S_0, far above the ties' 0.01 / (0.5 (sqrt 24 + sqrt 48)) = 0.0017.
    S = np.linspace(5.0, 0.5, 24)
    if tied_at is not None:
        S[tied_at + 1] = S[tied_at] - gap
    return S


def test_rotating_an_exactly_tied_pair_changes_cosines_not_the_span():
    """Exactly equal singular values: a perturbation of 1e-13 picks a different basis of the pair. Single-vector
    cosines move by far more than the perturbation; the pair's subspace score does not (1e-12)."""
    S = spectrum(tied_at=2, gap=0.0)
    runs = []
    for eps_seed in (None, 7):
        model, _ = planted_model(S)
        if eps_seed is not None:
            W = surgery.wrap(model).mlp_in(0)
            with torch.no_grad():
                W += 1e-13 * torch.randn(W.shape, generator=torch.Generator().manual_seed(eps_seed), dtype=W.dtype)
        a = alignment(model, embeddings=["state_in", "action_out"], weights=["K"], blocks=[0], noise=0.01,
                      dtype="float64")
        runs.append(a.vectors.sort("embedding", "idx"))
    v0, v1 = runs
    pair = (v0["idx"] == 2) | (v0["idx"] == 3)
    assert (v0["group"][pair] == 2).all() and (v0["group_size"][pair] == 2).all()
    assert not v0["identifiable"][pair].any() and v0["identifiable"][~pair].all()
    # The solver turned the pair (single cosines moved) ...
    assert np.abs(v0["cos"][pair] - v1["cos"][pair]).max() > 0.05
    # ... and nothing else, and not the span.
    np.testing.assert_allclose(v0["cos"][~pair], v1["cos"][~pair], atol=1e-10)
    np.testing.assert_allclose(v0["subspace_cos"][pair], v1["subspace_cos"][pair], atol=1e-12)
    np.testing.assert_allclose(v0["subspace_p"][pair], v1["subspace_p"][pair], rtol=1e-9)


def test_a_planted_subspace_is_found_by_its_span():
    """An embedding at 45 degrees to both vectors of a tied pair: each vector sees cos 0.71, the span sees 1."""
    S = spectrum(tied_at=5, gap=1e-6)  # a near tie: the solver returns the planted vectors, the criterion ties them
    model, U = planted_model(S)
    e = (U[:, 5] + U[:, 6]) / math.sqrt(2)
    with torch.no_grad():
        model.predict_action[0].weight[1] = torch.tensor(e) * 2.0  # label a1 of action_out
    loc = locate(model, "action_out", weights=["K"], blocks=[0], noise=0.01, dtype="float64")
    v = loc.alignment.vectors.where(embedding="action_out")
    pair = v.take((v["idx"] == 5) | (v["idx"] == 6))
    np.testing.assert_allclose(np.abs(pair["cos"]), [1 / math.sqrt(2)] * 2, atol=1e-9)
    np.testing.assert_allclose(pair["subspace_cos"], [1.0, 1.0], atol=1e-9)
    assert list(pair["subspace_label"]) == ["a1", "a1"] and not pair["identifiable"].any()
    assert (pair["subspace_p_adj"] < 1e-10).all()
    g = loc.alignment.groups.where(embedding="action_out", group=5).row(0)
    assert g["group_size"] == 2 and g["best_member_abs_cos"] == pytest.approx(1 / math.sqrt(2), abs=1e-9)
    assert g["subspace_cos"] == pytest.approx(1.0, abs=1e-9) and g["label"] == "a1"
    # The ranking's strongest vector is in the pair, and the answer says it is rotation-unstable.
    s = loc.summary.row(0)
    assert s["idx"] in (5, 6) and not s["identifiable"]
    assert "rotation-unstable: tied with #5-#6; their span 1.000 'a1'" in str(loc)


def test_alignment_columns_are_consistent():
    model = build("dt")
    a = alignment(model, embeddings=["action_out", "time_in"], noise=0.2)
    v = a.vectors
    assert (v["identifiable"] == (v["group_size"] == 1)).all()  # no open groups in a DT (no complement)
    lone = v.take(v["group_size"] == 1)
    np.testing.assert_allclose(lone["subspace_cos"], lone["abs_cos"])  # a lone triple's span is itself
    np.testing.assert_allclose(lone["subspace_p"], lone["p"])
    tied = v.take(v["group_size"] > 1)
    assert len(tied) and (tied["subspace_cos"] >= tied["abs_cos"] - 1e-12).all()  # the span holds the vector
    assert np.isfinite(v["subspace_p_adj"]).all() and (v["subspace_p_adj"] >= v["subspace_p"]).all()
    # Every group of every searched weight is there once per set, and each is corrected over its set's groups.
    g = a.groups
    for name in ("action_out", "time_in"):
        assert a.group_family_size[name] == len(g.where(embedding=name))
        assert g.where(embedding=name)["group_size"].sum() == len(v.where(embedding=name))
    w = a.weights
    for r in w.rows():
        mine = v.where(embedding=r["embedding"], block=r["block"], weight=r["weight"],
                       head=-1 if r["head"] is None else r["head"], side=r["side"])
        assert r["n_tied"] == int((~mine["identifiable"].astype(bool)).sum())
    rec = a.records
    assert {"group", "group_size", "identifiable"} <= set(rec.names)


@pytest.mark.parametrize("noise", [0.1, 1.5, 25.0])
def test_group_scores_match_numpy(noise):
    """Every group's span score against an independent float64 numpy SVD and projection (narrow groups, groups
    wider than d/2 scored through their complement, and one group spanning all of R^d)."""
    model = build("dt", square=True)
    a = alignment(model, embeddings="state_in", weights=["K", "OV"], noise=noise, dtype="float64")
    E = model.embed_state.weight.detach().double().numpy().T  # Linear [out, in]: column j is input j
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    checked = wide = 0
    for g in a.groups.rows():
        M = reference_matrix(model, g["block"], g["weight"], g["head"], reference_weights(model, g["block"]))
        U, S, Vt = np.linalg.svd(M)
        r = 8 if g["weight"] == "OV" else 24  # a head's OV has rank d_head = 8
        vecs = (U if g["side"] == "in" else Vt.T)[:, :r]
        t = ties(S[:r], noise, (24, 24), complement=24 > r)
        assert (t.group == g["group"]).sum() == g["group_size"]
        if g["open"]:
            assert g["subspace_cos"] is None and g["p_adj"] is None
            continue
        B = vecs[:, g["group"]:g["group"] + g["group_size"]]
        proj = np.linalg.norm(E @ B, axis=1)
        assert g["subspace_cos"] == pytest.approx(proj.max(), abs=1e-10)
        assert g["label_index"] == int(proj.argmax()) or proj.max() - proj[g["label_index"]] < 1e-10
        checked += 1
        wide += 2 * g["group_size"] > 24
    assert checked > 0 and (noise < 20 or wide > 0)


def test_a_group_cut_by_the_vector_selection_is_scored_whole():
    """vectors=N may cut a tied group: its span is still the whole group's (projected apart from the search)."""
    model = build("dt")
    full = alignment(model, embeddings="state_in", weights=["K", "V"], noise=0.5)
    part = alignment(model, embeddings="state_in", weights=["K", "V"], noise=0.5, vectors=[0, 3, 4, 5])
    cut = 0
    for r in part.vectors.rows():
        ref = full.vectors.where(block=r["block"], weight=r["weight"], idx=r["idx"]).row(0)
        assert (r["group"], r["group_size"]) == (ref["group"], ref["group_size"])
        assert r["subspace_cos"] == pytest.approx(ref["subspace_cos"], abs=1e-12)
        cut += r["group_size"] > 1 and not set(range(r["group"], r["group"] + r["group_size"])) <= {0, 3, 4, 5}
    assert cut > 0


def test_a_head_with_a_complement_gets_open_groups_not_scores():
    """A GPT-2 head's OV has rank d_head < d_model: a last singular value near 0 is tied with the complement."""
    model = build("gpt2")
    a = alignment(model, embeddings="token_out", weights=["OV"], noise=2.0)  # a large noise: ties reach zero
    v = a.vectors
    opened = ~v["identifiable"].astype(bool) & np.isnan(v["subspace_cos"].astype(float))
    assert opened.any()
    g = a.groups
    assert g["open"].any() and np.isnan(g.take(g["open"].astype(bool))["p_adj"].astype(float)).all()
    assert a.group_family_size["token_out"] == int((~g["open"].astype(bool)).sum())


# ---- chance ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,k", [(8, 1), (32, 3), (128, 10)])
def test_beta_law_matches_sampling(d, k):
    x = np.random.default_rng(k).normal(size=(20000, d))
    proj2 = (x[:, :k] ** 2).sum(1) / (x ** 2).sum(1)  # a uniform unit vector on a fixed k-subspace
    assert stats.kstest(proj2, stats.beta(k / 2, (d - k) / 2).cdf).pvalue > 0.01
    for q in (0.5, 0.9, 0.99):
        s = math.sqrt(np.quantile(proj2, q))
        assert abs(chance.subspace_pvalue(s, k, d) - (1 - q)) < 4 * math.sqrt(q * (1 - q) / proj2.size)
    s = np.linspace(0, 1, 11)
    np.testing.assert_allclose(chance.subspace_pvalue(s, k, d), stats.beta(k / 2, (d - k) / 2).sf(s ** 2),
                               atol=1e-12)


def test_beta_law_special_cases():
    c = np.linspace(0, 1, 9)
    np.testing.assert_allclose(chance.subspace_pvalue(c, 1, 50), chance.pair_pvalue(c, 50), atol=1e-14)
    assert np.all(chance.subspace_pvalue(c, 50, 50) == 1.0)  # the whole space holds every vector
    one = chance.subspace_null_for(torch.randn(1, 50))
    assert one.samples.shape[0] == 0
    np.testing.assert_allclose(one.pvalue(c, 4), chance.subspace_pvalue(c, 4, 50))


def test_subspace_null_gives_uniform_pvalues_on_random_weights():
    """Random weights: tied groups are random subspaces; their scores' p-values against the set are uniform."""
    d, n = 32, 12
    rng = np.random.default_rng(0)
    E = torch.tensor(rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(1, d)))  # non-orthogonal, like embeddings
    null = chance.subspace_null_for(E, draws=5000, seed=0)
    En = torch.nn.functional.normalize(E, dim=1)
    for k in (2, 5):
        bases = []
        for i in range(1500):  # one random weight per draw: a group of k consecutive triples of its SVD
            U = np.linalg.svd(rng.normal(size=(d, d)))[0]
            bases.append(torch.tensor(U[:, 3:3 + k].T))
        score, _ = projection_maxima(bases, En)
        p = null.pvalue(score, k)
        assert stats.kstest(p, "uniform").pvalue > 0.01, k
    # The union bound alone (no sample) is never below the truth: conservative, not uniform.
    union = chance.SubspaceNull(d, n, np.empty((0, d)), 0)
    assert (union.pvalue(score, 5) >= null.pvalue(score, 5) - 1e-12).all()


def test_a_set_too_large_to_sample_gets_the_union_bound_alone():
    big = chance.subspace_null_for(torch.randn(3000, 128))  # a draw would cost ~5e7 multiply-adds
    assert big.samples.shape[0] == 0 and big.n == 3000
    s = np.array([0.3, 0.5, 0.9])
    np.testing.assert_allclose(big.pvalue(s, 3), np.minimum(1, 3000 * chance.subspace_pvalue(s, 3, 128)))
    with pytest.raises(SurgeryError, match="draws=0"):
        chance.subspace_null_for(torch.randn(5, 16), draws=0)


def test_subspace_null_is_reproducible_and_nested_across_set_sizes():
    E = torch.randn(6, 40, dtype=torch.float64)
    a = chance.subspace_null_for(E, draws=1500, seed=3)
    chance._SUBSPACE_NULLS.clear()
    b = chance.subspace_null_for(E, draws=1500, seed=3)
    np.testing.assert_array_equal(a.samples, b.samples)
    # Column k is the law for dimension k: the statistic grows with k, reaching 1 at k = d.
    assert (np.diff(a.samples.mean(0)) >= 0).all() and a.samples[:, -1].min() == pytest.approx(1.0)


# ---- measuring a perturbation ---------------------------------------------------------------------------
def test_perturbation_matches_numpy_and_weyl_is_a_lower_bound():
    a, b = build("dt"), build("dt")
    E = 1e-3 * torch.randn(surgery.wrap(b).mlp_in(1).shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        surgery.wrap(b).mlp_in(1).add_(E)
        surgery.wrap(b).attn_weights(0)["W_O"][1].mul_(1.01)
    t = perturbation(a, b)
    k1 = t.where(block=1, weight="K").row(0)
    Wa = surgery.wrap(a).mlp_in(1).detach().double().numpy()
    Wb = surgery.wrap(b).mlp_in(1).detach().double().numpy()
    s0 = np.linalg.svd(Wa, compute_uv=False)[0]
    assert k1["rel"] == pytest.approx(np.linalg.norm(Wb - Wa, 2) / s0, rel=1e-9)
    assert k1["rel_fro"] == pytest.approx(np.linalg.norm(Wb - Wa) / s0, rel=1e-9)
    assert (t["weyl"] <= t["rel"] + 1e-12).all()
    untouched = t.where(block=0, weight="K").row(0)
    assert untouched["rel"] == 0 and untouched["weyl"] == 0
    ov = t.where(block=0, weight="OV")
    assert ov.where(head=1).row(0)["rel"] > 0 and ov.where(head=0).row(0)["rel"] == 0
