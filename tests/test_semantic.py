"""Token tables and the coherence score: a planted cluster scores high, random directions do not."""
from __future__ import annotations

import pytest
import torch

import surgery
from surgery.lm import semantic


def clustered_embeddings(vocab=3000, d=64, members=12, spread=0.6, seed=0):
    """Isotropic random token embeddings with one planted cluster: tokens 0..members-1 around a centre."""
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(vocab, d, generator=g, dtype=torch.float64)
    centre = torch.randn(d, generator=g, dtype=torch.float64)
    centre /= centre.norm()
    E[:members] = centre * d ** 0.5 + spread * E[:members]
    return E, centre


def test_planted_cluster_scores_high_and_random_directions_do_not():
    E, centre = clustered_embeddings()
    Eu = semantic.unit_rows(E)
    null = semantic.CoherenceNull.build(Eu, n=10, draws=400)
    ids, cos, neg_ids, _ = semantic.top_tokens(centre[:, None], Eu, 10)
    assert set(ids[0].tolist()) <= set(range(12))  # the cluster's tokens, found by cosine
    c = semantic.mean_pairwise_cosine(Eu, ids)
    assert null.z(c).item() > 10 and null.p(c).item() < 0.01
    # Fresh random directions (not those of the null): z-scores look like draws from the null.
    R = torch.randn(64, 200, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rid, _, _, _ = semantic.top_tokens(R, Eu, 10)
    z = null.z(semantic.mean_pairwise_cosine(Eu, rid))
    assert abs(z.mean().item()) < 0.3 and 0.7 < z.std().item() < 1.3
    assert (null.p(semantic.mean_pairwise_cosine(Eu, rid)) < 0.01).float().mean() < 0.04


def test_random_token_set_null_is_biased_for_random_directions():
    """Why the default null selects tokens by direction: top tokens of any direction share a component."""
    E, _ = clustered_embeddings(d=32)
    Eu = semantic.unit_rows(E)
    naive = semantic.CoherenceNull.build(Eu, n=10, draws=400, kind="tokens")
    R = torch.randn(32, 200, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    rid, _, _, _ = semantic.top_tokens(R, Eu, 10)
    assert naive.z(semantic.mean_pairwise_cosine(Eu, rid)).mean() > 2


def test_top_tokens_chunked_equals_dense():
    E, _ = clustered_embeddings(vocab=1000, d=16)
    Eu = semantic.unit_rows(E, torch.float64)
    X = torch.randn(16, 5, dtype=torch.float64)
    ids, cos, nids, ncos = semantic.top_tokens(X, Eu, 7, chunk=97)
    full = Eu @ (X / X.norm(dim=0))
    want = full.topk(7, dim=0)
    assert torch.equal(ids, want.indices.T) and torch.allclose(cos, want.values.T)
    assert torch.equal(nids, full.topk(7, dim=0, largest=False).indices.T)
    assert torch.allclose(ncos, full.topk(7, dim=0, largest=False).values.T)


def _model_with_a_planted_direction(members=12):
    """A GPT-2 whose K in block 0 reads one direction strongly: the centre of a planted token cluster."""
    import transformers as tf
    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=600, n_positions=16, n_embd=32, n_layer=1, n_head=4, n_inner=64)
    model = tf.GPT2LMHeadModel(cfg).eval()
    E, centre = clustered_embeddings(vocab=600, d=32, members=members, spread=0.4)
    with torch.no_grad():
        model.transformer.wte.weight.copy_(E.float())
        W = model.transformer.h[0].mlp.c_fc.weight  # [d_model, d_mlp]
        W.add_(10 * centre.float()[:, None] * torch.randn(64).abs()[None, :])
    return model


def test_token_table_finds_the_planted_direction_and_labels_by_id_without_a_tokenizer():
    model = _model_with_a_planted_direction()
    t = semantic.token_table(model, block=0, weight="K", k=3, n=8)
    assert t.side == "in" and t.embedding == "token_out" and t.pos_ids.shape == (3, 8)
    top = t.rows()[0]
    direction = "pos" if t.pos_z[0] > t.neg_z[0] else "neg"  # the sign rule picks the sign, not the cluster
    ids = (t.pos_ids if direction == "pos" else t.neg_ids)[0]
    assert set(ids.tolist()) <= set(range(12))
    assert max(t.pos_z[0], t.neg_z[0]) > 5 and abs(t.pos_z[1:]).max() < 4
    assert top["pos"][0][0].startswith("#")  # no tokenizer: labelled by id
    assert "block 0 K: in side vs token_out" in t.format()


def test_fast_route_gives_the_same_table():
    model = _model_with_a_planted_direction()
    Eu = semantic.unit_rows(surgery.wrap(model).embedding_sets()["token_out"].vectors)
    null = semantic.CoherenceNull.build(Eu, 8, draws=100)
    exact = semantic.token_table(model, 0, "K", k=2, n=8, null=null, E_unit=Eu)
    fast = semantic.token_table(model, 0, "K", k=2, n=8, null=null, E_unit=Eu, method="gram")
    assert torch.equal(exact.pos_ids, fast.pos_ids) and torch.equal(exact.neg_ids, fast.neg_ids)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weight="OV"), r"weight 'OV' is per head: give head=0..3"),
    (dict(weight="K", embedding="state_in"), r"embedding='state_in' is not an embedding set of this model; valid: token_in, token_out"),
    (dict(weight="K", side="out"), r"the out side of K lives in the MLP's hidden space"),
    (dict(weight="K", k=33), r"k=33 is out of range: K has 32 singular triples"),
    (dict(weight="K", n=1), r"n=1 tokens per direction is out of range"),
])
def test_bad_input(kwargs, message):
    model = _model_with_a_planted_direction()
    with pytest.raises(ValueError, match=message):
        semantic.token_table(model, block=0, **kwargs)


def test_mean_pairwise_cosine_against_brute_force():
    E = semantic.unit_rows(torch.randn(40, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                           torch.float64)
    ids = torch.tensor([[0, 5, 9, 12], [1, 2, 3, 4]])
    for row, got in zip(ids, semantic.mean_pairwise_cosine(E, ids)):
        G = E[row] @ E[row].T
        want = (G.sum() - G.diag().sum()) / (4 * 3)
        torch.testing.assert_close(got, want)
    same = torch.zeros(1, 5, dtype=torch.long)  # one token five times: cosine 1 with itself
    torch.testing.assert_close(semantic.mean_pairwise_cosine(E, same), torch.ones(1, dtype=torch.float64))
    eye = torch.eye(8, dtype=torch.float64)  # orthogonal tokens: 0
    assert semantic.mean_pairwise_cosine(eye, torch.arange(8)[None]).abs().max() < 1e-15
