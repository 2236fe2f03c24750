"""Width: raw cosines fall with d_model on random weights, z-scores against chance do not; planted signal is found."""
from __future__ import annotations

import torch

import surgery
from surgery.lm import width as lm_width


def random_gpt2(d: int, vocab: int = 3000, seed: int = 0):
    import transformers as tf

    tf.logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = tf.GPT2Config(vocab_size=vocab, n_positions=8, n_embd=d, n_layer=1, n_head=4, n_inner=2 * d)
    return tf.GPT2LMHeadModel(cfg).eval()


def test_random_weights_raw_cosines_fall_with_width_but_z_scores_do_not():
    narrow, wide = random_gpt2(32), random_gpt2(256)
    s_narrow = lm_width.summarize(lm_width.width_rows(narrow, k=8, draws=400))
    s_wide = lm_width.summarize(lm_width.width_rows(wide, k=8, draws=400))
    for w in ("K", "V", "OV"):
        # Chance alone: best |cos| of a random direction with 3000 tokens shrinks ~ 1/sqrt(d).
        assert s_wide[w]["median_best_cos"] < 0.6 * s_narrow[w]["median_best_cos"]
        assert s_wide[w]["chance_mean"] < 0.6 * s_narrow[w]["chance_mean"]
        for s in (s_narrow, s_wide):
            assert abs(s[w]["median_z"]) < 1.0 and s[w]["beyond_chance_holm"] == 0.0


def test_a_planted_token_direction_is_beyond_chance_at_any_width():
    for d in (32, 256):
        model = random_gpt2(d, seed=1)
        a = surgery.wrap(model)
        e = a.embedding_sets()["token_out"].vectors[17].double()
        W = a.mlp_in(0)  # K reads the residual stream: make its top read direction token 17's
        with torch.no_grad():
            W.add_((5 * e / e.norm())[:, None].float() * torch.ones(W.shape[1]))
        rows = [r for r in lm_width.width_rows(model, weights=("K",), k=2, draws=400) if r["idx"] == 0]
        assert rows[0]["best_cos"] > 0.9 and rows[0]["p"] < 1e-6 and rows[0]["z"] > 5


def test_compare_prints_one_line_per_model_and_weight():
    text = lm_width.compare({"narrow": random_gpt2(32), "wide": random_gpt2(64)}, k=2, draws=100)
    lines = text.splitlines()
    assert len(lines) == 1 + 2 * 3 and "median z" in lines[0] and lines[1].startswith("narrow")
