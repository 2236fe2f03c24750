"""DTPolicy (the batched forward) against Hugging Face's DecisionTransformerModel forward."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformers import DecisionTransformerConfig, DecisionTransformerModel

from surgery.behaviour.hf_loop import hf_episode, hf_get_action, untrained_dt
from surgery.behaviour.policy import DTPolicy, forward_flops


def scramble(model, seed: int = 0):
    """Random LayerNorm gains/biases and linear biases, so every parameter matters to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ("ln" in name and name.endswith("weight")):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def tiny_dt(heads=3, inner=48, dtype=torch.float32, tanh=True, act="relu", seed=0):
    """A small multi-head DT with an unusual MLP width and activation, in the given dtype."""
    torch.manual_seed(seed)
    cfg = DecisionTransformerConfig(state_dim=5, act_dim=3, hidden_size=24, n_layer=3, n_head=heads, n_inner=inner,
                                    max_ep_len=64, action_tanh=tanh, activation_function=act,
                                    bos_token_id=None, eos_token_id=None)
    return scramble(DecisionTransformerModel(cfg).to(dtype).eval(), seed)


def padded_batch(model, B=6, L=7, seed=1, dtype=torch.float32):
    """Random windows, left-padded to L with zeros and masked as the HF example does."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    lengths = [L, 1, 2, L - 1, 3, L][:B]
    s = torch.randn(B, L, c.state_dim, generator=g, dtype=dtype)
    a = torch.randn(B, L, c.act_dim, generator=g, dtype=dtype)
    r = torch.randn(B, L, 1, generator=g, dtype=dtype)
    t = torch.randint(0, c.max_ep_len, (B, L), generator=g)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, L - n:] = 1
    pad = mask == 0
    s[pad], a[pad], r[pad], t[pad] = 0, 0, 0, 0
    return s, a, r, t, mask, lengths


def hf_last(model, s, a, r, t, mask):
    with torch.no_grad():
        _, preds, _ = model(states=s, actions=a, returns_to_go=r, timesteps=t, attention_mask=mask, return_dict=False)
    return preds[:, -1]


@pytest.mark.parametrize("heads,act,tanh", [(1, "relu", True), (3, "relu", True), (2, "gelu_new", False)])
def test_same_arithmetic_as_hf_in_float64(heads, act, tanh):
    # In float64 rounding is ~1e-16, so agreement to 1e-12 means the same function, not a near miss.
    model = tiny_dt(heads=heads, act=act, tanh=tanh, dtype=torch.float64)
    s, a, r, t, mask, lengths = padded_batch(model, dtype=torch.float64)
    want = hf_last(model, s, a, r, t, mask)
    policy = DTPolicy(model, torch.float64)
    torch.testing.assert_close(policy(s, a, r, t, mask, out_dtype=torch.float64), want, atol=1e-12, rtol=0)
    # The engine feeds unpadded windows (all live episodes share a length): the same outputs per row.
    for i, n in enumerate(lengths):
        row = policy(s[i:i + 1, -n:], a[i:i + 1, -n:], r[i:i + 1, -n:], t[i:i + 1, -n:], out_dtype=torch.float64)
        torch.testing.assert_close(row[0], want[i], atol=1e-12, rtol=0)


def test_float32_study_shape_matches_hf():
    model, _ = untrained_dt("Hopper-v5")
    scramble(model)
    s, a, r, t, mask, _ = padded_batch(model, L=20)
    want = hf_last(model, s, a, r, t, mask)
    for fused in (True, False):
        got = DTPolicy(model, fused=fused)(s, a, r, t, mask)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_batched_equals_hf_loop_on_recorded_histories():
    """The HF example's loop plays episodes; the batched forward, given the same histories, picks the same actions."""
    model, md = untrained_dt("Hopper-v5")
    scramble(model)
    env = gym.make("Hopper-v5", terminate_when_unhealthy=False)
    runs = [hf_episode(model, md, env, seed=s, target_return=3600.0, max_steps=30, record=True) for s in range(3)]
    mean, std = torch.tensor(md.state_mean), torch.tensor(md.state_std)
    policy = DTPolicy(model)
    K = md.context_len
    for t in range(30):
        lo = max(0, t + 1 - K)
        S = torch.stack([(r["states"][lo:t + 1] - mean) / std for r in runs])
        A = torch.stack([r["actions"][lo:t] for r in runs])
        R = torch.stack([r["returns_to_go"][0, lo:t + 1, None] for r in runs])
        got = policy(S, A, R, torch.arange(lo, t + 1))
        want = torch.stack([r["outputs"][t] for r in runs])
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0, msg=f"step {t}")


def test_in_place_edit_is_seen_like_hf():
    model, _ = untrained_dt("Hopper-v5")
    scramble(model)
    s, a, r, t, mask, _ = padded_batch(model, L=20)
    policies = [DTPolicy(model), DTPolicy(model, fused=False), DTPolicy(model, torch.bfloat16)]
    before = [p(s, a, r, t, mask) for p in policies]
    w = model.encoder.h[1].mlp.c_fc.weight
    saved = w.detach().clone()
    with torch.no_grad():
        w[:, :64].mul_(-3.0)  # in place, as surgery.patch edits
    want = hf_last(model, s, a, r, t, mask)
    after = [p(s, a, r, t, mask) for p in policies]
    assert not torch.allclose(want, before[0], atol=1e-3)  # the edit matters
    torch.testing.assert_close(after[0], want, atol=2e-5, rtol=0)
    torch.testing.assert_close(after[1], want, atol=2e-5, rtol=0)
    assert (after[2] - want).abs().max() < 0.05 and not torch.equal(after[2], before[2])
    with torch.no_grad():
        w.copy_(saved)
    for p, b in zip(policies, before):
        assert torch.equal(p(s, a, r, t, mask), b)  # restored weights: bitwise the original outputs


def test_a_dtype_round_trip_is_not_served_stale_derived_weights():
    """`model.to(dtype)` swaps each parameter's data without bumping its version counter."""
    model, _ = untrained_dt("Hopper-v5")
    scramble(model)
    s, a, r, t, mask, _ = padded_batch(model, L=20)
    policy = DTPolicy(model)
    before = policy(s, a, r, t, mask)  # fills the cache of transposed copies
    model.to(torch.float8_e5m2).to(torch.float32)  # rounds every weight; same Parameter objects, same versions
    fresh = DTPolicy(model)(s, a, r, t, mask)
    assert (fresh - before).abs().max() > 0.01  # the rounding matters (0.038 measured; 1.4e-3 when only the
    torch.testing.assert_close(policy(s, a, r, t, mask), fresh, atol=1e-4, rtol=0)  # cached copies are stale)
    torch.testing.assert_close(fresh, hf_last(model, s, a, r, t, mask), atol=2e-5, rtol=0)


def test_bfloat16_error_is_small():
    model, _ = untrained_dt("Hopper-v5")
    scramble(model)
    s, a, r, t, mask, _ = padded_batch(model, L=20)
    diff = (DTPolicy(model, torch.bfloat16)(s, a, r, t, mask) - DTPolicy(model)(s, a, r, t, mask)).abs().max()
    assert 0 < diff < 0.05


def test_discrete_logits_match_hf():
    model, md = untrained_dt("LunarLander-v3")
    scramble(model)
    assert not model.config.action_tanh
    s, a, r, t, mask, _ = padded_batch(model, L=20)
    torch.testing.assert_close(DTPolicy(model)(s, a, r, t, mask), hf_last(model, s, a, r, t, mask), atol=2e-5, rtol=0)


def test_hf_get_action_is_the_hf_forward():
    # The reference loop itself: its padded window gives the model's own output.
    model, md = untrained_dt("Hopper-v5")
    g = torch.Generator().manual_seed(0)
    s, a, r = torch.randn(5, 11, generator=g), torch.randn(5, 3, generator=g), torch.randn(1, 5, generator=g)
    t = torch.arange(5).reshape(1, 5)
    got = hf_get_action(model, s, a, r, t, context_len=20)
    mask = torch.tensor([[0] * 15 + [1] * 5])
    pad = lambda x, d: torch.cat([torch.zeros(1, 15, d), x.reshape(1, 5, d)], dim=1)  # noqa: E731
    padded_t = torch.cat([torch.zeros(1, 15, dtype=torch.long), t], 1)
    want = hf_last(model, pad(s, 11), pad(a, 3), pad(r, 1), padded_t, mask)
    assert torch.equal(got, want[0])


def test_rejects_non_float_dtype():
    model, _ = untrained_dt("Hopper-v5")
    with pytest.raises(ValueError, match="floating-point"):
        DTPolicy(model, torch.int32)


def test_forward_flops_from_shapes():
    model, _ = untrained_dt("Hopper-v5")
    f = forward_flops(model.config, 20)
    # 3 blocks x 60 tokens x (c_attn 128x384 + c_proj 128x128 + c_fc 128x512 + c_proj 512x128) x 2 FLOP per MAC
    assert f["linear"] == 3 * 60 * (128 * 384 + 128 * 128 + 128 * 512 + 512 * 128) * 2
    assert abs(f["linear"] / 1e6 - 70.8) < 0.1
    assert f["policy_linear"] < 0.7 * f["linear"]
    assert np.isclose(f["attention"], 3 * 2 * 60 * 60 * 128 * 2)
