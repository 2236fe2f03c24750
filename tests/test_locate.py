"""surgery.locate: a planted direction is found where it was planted; random weights carry nothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import surgery
from surgery.analysis.localisation import locate
from tests.conftest import build

pytestmark = pytest.mark.usefixtures("one_thread")


def unit(v):
    return v / v.norm()


def plant_k(model, block, e, strength=3.0):
    """Make K of `block` read direction e strongly: W += c e w^T (a rank-1 reader of e)."""
    a = surgery.wrap(model)
    W = a.mlp_in(block)
    w = unit(torch.randn(W.shape[1], generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        W += strength * W.norm() / W.shape[0] ** 0.5 * torch.outer(unit(e), w)


def plant_ov_write(model, block, head, e, strength=3.0):
    """Make one head's OV write direction e: W_O[head] += c x e^T, so W_V W_O gains a rank-1 part along e."""
    a = surgery.wrap(model)
    W_O = a.attn_weights(block)["W_O"]  # view [H, d_head, d_model]
    x = unit(torch.randn(W_O.shape[1], generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        W_O[head] += strength * W_O[head].norm() * torch.outer(x, unit(e))


def test_planted_direction_is_found():
    model = build("dt")
    e = model.predict_action[0].weight.detach()[1].clone()  # action_out, label a1
    plant_k(model, 1, e)
    loc = locate(model, "action_out")
    best = loc.ranking.row(0)
    assert (best["block"], best["weight"], best["side"], best["idx"], best["label"]) == (1, "K", "in", 0, "a1")
    assert best["abs_cos"] > 0.9 and best["p_adj"] < 1e-6
    carriers = loc.carriers("action_out")
    assert len(carriers) >= 1 and carriers.row(0)["block"] == 1 and carriers.row(0)["weight"] == "K"
    s = loc.summary.row(0)
    assert (s["block"], s["weight"], s["label"]) == (1, "K", "a1") and s["n_significant"] >= 1
    assert "block 1 K (read side)" in str(loc)


def test_planted_head_is_found():
    model = build("gpt2")
    e = model.transformer.wte.weight.detach()[7].clone()
    plant_ov_write(model, 0, 2, e)
    loc = locate(model, "token_out", weights=["OV"])
    best = loc.ranking.row(0)
    assert (best["block"], best["weight"], best["head"], best["side"], best["label_index"]) == (0, "OV", 2, "out", 7)
    assert best["p_adj"] < 1e-6


def test_random_weights_carry_nothing():
    model = build("dt", seed=3)
    loc = locate(model, None)
    assert list(loc.summary["embedding"]) == list(surgery.wrap(model).embedding_sets())
    # Per set, a family-wise error below 5%: with this seed no set has a false positive.
    assert (loc.summary["n_significant"] == 0).all(), loc.summary
    assert "no weight is more aligned than chance" in str(loc)
    assert np.isfinite(loc.summary["threshold"]).all() and (loc.summary["threshold"] < 1).all()


def test_fewer_vectors_searched_need_a_lower_bar():
    """The study's open question in miniature: the same cosine is significant or not by how much was searched."""
    model = build("dt")
    wide = locate(model, "return_in")
    narrow = locate(model, "return_in", weights=["V"], blocks=[1], vectors=1)
    assert narrow.alignment.family_size["return_in"] == 1
    assert narrow.summary.row(0)["threshold"] < wide.summary.row(0)["threshold"]


def test_weight_table_is_ranked():
    model = build("dt")
    plant_k(model, 0, model.embed_return.weight.detach()[:, 0].clone())
    w = locate(model, "return_in").weights
    assert w.row(0)["block"] == 0 and w.row(0)["weight"] == "K" and w.row(0)["n_significant"] >= 1
    assert w.row(0)["selectivity"] > 1.5 and w.row(0)["selectivity_z"] > 3
    p = w["best_p_adj"].astype(float)
    assert (np.diff(p) >= 0).all()


def test_near_null_vectors_are_flagged_and_never_carriers():
    """LunarLander's OV heads have triples with S ~ 1e-6: aligned or not, the weight ignores those directions."""
    import surgery
    from surgery.analysis.settings import NOISE

    model = surgery.load("lunarlander")
    loc = surgery.locate(model, embedding=None)
    v = loc.alignment.vectors
    for w in ("K", "V", "OV", "QK"):  # the flag is exactly S_i < noise x S_0 of the triple's own spectrum
        for b in range(model.n_blocks):
            S = surgery.decompose(model, b, w).S.double()
            S = S[0] if w in ("OV", "QK") else S
            mine = v.where(embedding="action_out", block=b, weight=w, head=0 if w in ("OV", "QK") else -1)
            mine = mine.where(side=mine["side"][0])
            want = (S < NOISE[w] * S[0]).numpy()[np.asarray(mine["idx"], int)]
            assert np.array_equal(np.asarray(mine["near_null"], bool), want)
            np.testing.assert_allclose(np.asarray(mine["energy"], float),
                                       (S ** 2 / (S ** 2).sum()).numpy()[np.asarray(mine["idx"], int)], rtol=1e-9)
    assert v["near_null"].astype(bool).any()  # the case exists in the shipped model
    beyond = (v["p_adj"] < loc.alpha) & v["near_null"].astype(bool)
    assert beyond.any()  # ... and some near-null vectors align beyond chance,
    for name in loc.summary["embedding"]:
        s = loc.summary.where(embedding=name).row(0)
        assert s["n_near_null"] == int(beyond[v["embedding"] == name].sum())  # ... are counted apart,
        assert not s["near_null"] or s["n_significant"] == 0  # ... never the strongest when another exists
        carriers = loc.carriers(name)
        assert not np.asarray(carriers["best_near_null"], bool).any() if len(carriers) else True
