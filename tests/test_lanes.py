"""Lanes: each row of one batched forward under its own edit, against the model patched with `surgery.patch`.

The reference for every lane is the patched model run through the same DTPolicy on the same
windows (teacher forcing): `patch` writes `P + L R` into the weights, a lane adds `(x L) R` to
`x P`, so the two agree up to float rounding. Measured (36 edits per model: K, V, OV both sides,
QK both sides, in block 0 and the last block, ops constant, zero and scale by 5), max |lane - patched|
on the outputs in float32: Hopper 2.9e-7 (tanh'd actions; the edits move them by 7e-3..0.36, median
0.023), LunarLander 1.9e-6 (logits; moved by 0.03..4.1), the tiny 3-head models 9e-8; asserted:
1e-5. In bfloat16 a patch rounds P + L R to 8 bits where a lane rounds P: Hopper 3.9e-3,
LunarLander 2.7e-2 on logits up to ~10; asserted: 1% of the outputs' largest magnitude (at least 1).
Rows without an edit are bitwise those of a forward without lanes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery import patch
from surgery.behaviour.evaluation import evaluate
from surgery.behaviour.lanes import LaneEdits
from surgery.behaviour.policy import DTPolicy
from surgery.core.patching import Edit
from tests.test_evaluate_policy import padded_batch, tiny_dt

F32_TOL = 1e-5
"""Lane vs patched outputs, float32, absolute."""
BF16_TOL = 1e-2
"""Lane vs patched outputs, bfloat16, relative to the largest output magnitude (at least 1)."""


def kinds(block: int, head: int = 0) -> list[Edit]:
    """One edit of each kind and side in a block (idx 1: not the top triple; both sides of OV and QK)."""
    return [Edit(block, "K", 1), Edit(block, "V", 1), Edit(block, "OV", 1, head=head, side="out"),
            Edit(block, "OV", 1, head=head, side="in"), Edit(block, "QK", 1, head=head, side="in"),
            Edit(block, "QK", 1, head=head, side="out")]


def with_ops(edits: list[Edit]) -> list[Edit]:
    """Each edit as the study's constant, a removal, and a scaling of its singular value by 5."""
    ops = [dict(op="constant"), dict(op="zero"), dict(op="scale", value=5.0)]
    return [Edit(e.block, e.weight, e.idx, e.head, side=e.side, **op) for e in edits for op in ops]


def recorded_windows(adapter, episodes: int = 3, steps: int = 60, at=(7, 25, 59)):
    """Windows from recorded unedited episodes (teacher forcing): [(states, actions, rtg, timesteps)], one per t."""
    md = adapter.metadata
    res = evaluate(adapter, episodes=episodes, seed=0, progress=False, max_steps=steps, trajectories=True,
                   env_kwargs={"terminate_when_unhealthy": False} if md.env_id.startswith("Hopper") else None)
    K = md.context_len
    mean, std = torch.tensor(md.state_mean), torch.tensor(md.state_std)
    out = []
    for t in at:
        trs = [tr for tr in res.trajectories.values() if len(tr["rewards"]) > t]
        lo = max(0, t + 1 - K)
        S, A, R = [], [], []
        for tr in trs:
            obs = (torch.as_tensor(tr["observations"], dtype=torch.float32) - mean) / std
            acts = torch.as_tensor(np.asarray(tr["actions"]), dtype=torch.float32)
            if md.discrete:
                acts = torch.nn.functional.one_hot(acts.long(), md.act_dim).float()
            spent = np.concatenate([[0.0], np.cumsum(tr["rewards"])])
            rtg = (md.target_returns[0] - spent) / md.return_scale
            S.append(obs[lo:t + 1]), A.append(acts[lo:t]), R.append(torch.as_tensor(rtg[lo:t + 1], dtype=torch.float32))
        out.append((torch.stack(S), torch.stack(A), torch.stack(R)[..., None], torch.arange(lo, t + 1)))
    return out


def strong_tiny_dt(act: str = "relu"):
    """A tiny 3-head DT whose block weights are 10x larger, so an edit moves its outputs well above rounding."""
    model = tiny_dt(heads=3, act=act)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("encoder.h.") and p.dim() == 2:
                p.mul_(10)
    return model


def lane_vs_patched(model, edits, windows, dtype=torch.float32, fused=None):
    """(max |lane - patched|, max |patched - unedited|) per edit, and the outputs' largest magnitude.

    Every edit and unedited rows in one batch; the unedited rows are checked bitwise against a forward without lanes.
    """
    lane_edits = LaneEdits(model, [[e] for e in edits])
    lanes_policy = DTPolicy(model, dtype, fused=fused, edits=lane_edits)
    plain = DTPolicy(model, dtype, fused=fused)
    errors, moved, scale = np.zeros(len(edits)), np.zeros(len(edits)), 1.0
    for s, a, r, t in windows:
        n = s.shape[0]
        lanes = torch.arange(-1, len(edits)).repeat_interleave(n)  # [unedited x n, edit 0 x n, ...]
        rep = lambda x: x.repeat(len(edits) + 1, *[1] * (x.dim() - 1))  # noqa: E731
        tt = rep(t) if t.dim() == 2 else t  # per-row or shared timesteps
        got = lanes_policy(rep(s), rep(a), rep(r), tt, lanes=lanes).view(len(edits) + 1, n, -1)
        base = plain(rep(s), rep(a), rep(r), tt).view(len(edits) + 1, n, -1)
        assert torch.equal(got[0], base[0]), "unedited rows must be bitwise a forward without lanes"
        for i, e in enumerate(edits):
            with patch(model, [e]):
                want = DTPolicy(model, dtype, fused=fused)(s, a, r, t)
            errors[i] = max(errors[i], (got[i + 1] - want).abs().max().item())
            moved[i] = max(moved[i], (want - base[0]).abs().max().item())
            scale = max(scale, want.abs().max().item())
    return errors, moved, scale


@pytest.fixture(scope="module")
def zoo():
    import surgery
    from surgery import zoo as z

    if not {"hopper", "lunarlander"} <= set(z.names()):
        pytest.skip("the zoo's hopper and lunarlander checkpoints are not shipped")
    return {name: surgery.load(name) for name in ("hopper", "lunarlander")}


@pytest.mark.parametrize("name", ["hopper", "lunarlander"])
def test_each_lane_is_the_patched_model_on_recorded_histories(zoo, name):
    adapter = zoo[name]
    last = adapter.n_blocks - 1
    edits = with_ops(kinds(last) + kinds(0))
    windows = recorded_windows(adapter)
    errors, moved, _ = lane_vs_patched(adapter.model, edits, windows)
    assert errors.max() < F32_TOL, f"worst edit: {edits[int(errors.argmax())]}, {errors.max():.2e}"
    assert (moved > 100 * F32_TOL).all()  # every edit matters far beyond the tolerance
    errors, _, scale = lane_vs_patched(adapter.model, edits, windows, dtype=torch.bfloat16)
    assert errors.max() < BF16_TOL * scale


def test_multi_head_lanes_fused_and_plain_float32_and_bfloat16():
    """Three heads (the zoo's models have one): a head's OV/QK slice is the right columns or rows; GELU too."""
    for act in ("relu", "gelu_new"):
        model = strong_tiny_dt(act)
        s, a, r, t, mask, _ = padded_batch(model, B=6, L=7)
        windows = [(s[[0, 5]], a[[0, 5]], r[[0, 5]], t[[0, 5]])]  # full-length rows, per-row timesteps
        edits = with_ops(kinds(2, head=1) + kinds(0, head=2))
        for fused in (True, False):
            errors, moved, _ = lane_vs_patched(model, edits, windows, fused=fused)
            assert errors.max() < F32_TOL and (moved > 10 * F32_TOL).all(), (act, fused, errors.max())
            errors, _, scale = lane_vs_patched(model, edits, windows, dtype=torch.bfloat16, fused=fused)
            assert errors.max() < BF16_TOL * scale, (act, fused, errors.max())


def test_several_edits_of_one_lane_and_rank_many_edits(zoo):
    """A lane may carry several Edits on several parameters (what one Patch applies), and keep_top edits."""
    adapter = zoo["hopper"]
    groups = [[Edit(2, "QK", 0, head=0, side="out"), Edit(2, "OV", 0, head=0, side="in"), Edit(2, "K", 3)],
              [Edit(1, "V", 0, op="keep_top", value=100), Edit(0, "OV", 0, head=0, op="zero")],
              [Edit(2, "QK", 0, head=0, side="in"), Edit(2, "QK", 1, head=0, side="out")]]
    s, a, r, t = recorded_windows(adapter, at=(30,))[0]
    lanes_policy = DTPolicy(adapter.model, edits=LaneEdits(adapter, groups))
    lanes = torch.tensor([0, 1, 2, -1]).repeat_interleave(len(s))
    batch = s.repeat(4, 1, 1), a.repeat(4, 1, 1), r.repeat(4, 1, 1), t
    got = lanes_policy(*batch, lanes=lanes).view(4, len(s), -1)
    for i, group in enumerate(groups):
        with patch(adapter.model, group):
            want = DTPolicy(adapter.model)(s, a, r, t)
        assert (got[i] - want).abs().max() < F32_TOL
        assert (want - got[3]).abs().max() > 1e-3
    assert torch.equal(got[3], DTPolicy(adapter.model)(*batch).view(4, len(s), -1)[3])  # the same batch, no lanes


def test_no_lanes_is_exactly_todays_forward_and_bad_indices_are_refused():
    model = tiny_dt(heads=3)
    s, a, r, t, mask, _ = padded_batch(model, B=6, L=7)
    edits = LaneEdits(model, [[e] for e in kinds(1, head=0)])
    for fused in (True, False):
        for dtype in (torch.float32, torch.bfloat16):
            want = DTPolicy(model, dtype, fused=fused)(s, a, r, t, mask)
            lanes = DTPolicy(model, dtype, fused=fused, edits=edits)
            assert torch.equal(lanes(s, a, r, t, mask), want)
            assert torch.equal(lanes(s, a, r, t, mask, lanes=torch.full((6,), -1)), want)
            mixed = lanes(s, a, r, t, mask, lanes=torch.tensor([-1, 0, 5, -1, 3, -1]))
            assert torch.equal(mixed[[0, 3, 5]], want[[0, 3, 5]])  # unedited rows among edited ones: bitwise
    policy = DTPolicy(model, edits=edits)
    with pytest.raises(ValueError, match="-1 .unedited. or 0..5"):
        policy(s, a, r, t, mask, lanes=torch.tensor([0, 6, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="one edit index per row"):
        policy(s, a, r, t, mask, lanes=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="this policy has no edits"):
        DTPolicy(model)(s, a, r, t, mask, lanes=torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="another model"):
        DTPolicy(tiny_dt(heads=3), edits=edits)


def test_padded_young_rows_agree_with_unpadded_windows():
    """A row younger than the batch's window is left-padded and masked: the same outputs, up to rounding."""
    model = strong_tiny_dt()
    s, a, r, t, mask, lengths = padded_batch(model, B=6, L=7)
    edits = LaneEdits(model, [[e] for e in kinds(2, head=1) + kinds(0, head=0)])
    lanes = torch.tensor([-1, 0, 3, 5, 7, 11])
    for dtype, tol in ((torch.float32, F32_TOL), (torch.bfloat16, BF16_TOL)):  # measured 4.5e-8, 2.0e-3
        for fused in (True, False):
            policy = DTPolicy(model, dtype, fused=fused, edits=edits)
            padded = policy(s, a, r, t, mask, lanes=lanes)
            for i, n in enumerate(lengths):
                alone = policy(s[i:i + 1, -n:], a[i:i + 1, -n:], r[i:i + 1, -n:], t[i:i + 1, -n:], lanes=lanes[i:i + 1])
                assert (alone[0] - padded[i]).abs().max() < tol, (dtype, fused, i)


def test_stale_deltas_and_unmappable_parameters_are_refused():
    model = tiny_dt(heads=3)
    s, a, r, t, mask, _ = padded_batch(model, B=2, L=7)
    edits = LaneEdits(model, [[Edit(1, "K", 0)], [Edit(0, "OV", 0, head=1)]])
    policy = DTPolicy(model, edits=edits)
    with patch(model, block=1, weight="K", idx=2):  # the weights the deltas came from changed
        with pytest.raises(ValueError, match="changed after these lane edits"):
            policy(s, a, r, t, mask, lanes=torch.tensor([0, 1]))
    policy(s, a, r, t, mask, lanes=torch.tensor([0, 1]))  # reverted bitwise: valid again
    with pytest.raises(ValueError, match="idx=99 is out of range"):
        LaneEdits(model, [[Edit(1, "K", 99)]])
    with pytest.raises(ValueError, match="same singular triple"):
        LaneEdits(model, [[Edit(1, "K", 0), Edit(1, "K", 0, op="zero")]])
    with pytest.raises(ValueError, match="one entry per edit"):
        LaneEdits(model, Edit(1, "K", 0))
    conv = model.encoder.h[1].mlp.c_fc
    conv.weight = torch.nn.Parameter(conv.weight.detach().t().contiguous().t())  # same values, column-major
    with pytest.raises(ValueError, match="contiguous 2-D parameter"):
        LaneEdits(model, [[Edit(1, "K", 0)]])


def test_deltas_are_blocks_of_the_parameter_from_strides():
    """QK's key side edits W_K.T, a transposed view: its delta lands on the K columns of c_attn, transposed."""
    model = tiny_dt(heads=3)
    H, dh = 24, 8
    edits = LaneEdits(model, [[Edit(1, "QK", 0, head=2, side="out")], [Edit(1, "OV", 0, head=1, side="out")],
                              [Edit(1, "OV", 0, head=1, side="in")], [Edit(1, "V", 0)]])
    (qk,), (ov_out,), (ov_in,), (v,) = edits.deltas
    assert qk.param == "encoder.h.1.attn.c_attn.weight"
    assert (qk.rows, qk.cols) == (slice(0, H), slice(H + 2 * dh, H + 3 * dh))  # head 2's K columns, transposed
    assert ov_out.param == "encoder.h.1.attn.c_proj.weight"
    assert (ov_out.rows, ov_out.cols) == (slice(dh, 2 * dh), slice(0, H))  # head 1's rows of W_O
    assert ov_in.param == "encoder.h.1.attn.c_attn.weight" and ov_in.cols == slice(2 * H + dh, 2 * H + 2 * dh)
    assert v.param == "encoder.h.1.mlp.c_proj.weight" and (v.rows, v.cols) == (slice(0, 48), slice(0, H))
    # Each delta, written into a copy of its parameter, is what patch writes (float64 reference).
    params = dict(model.named_parameters())
    for group, d in zip(edits.edits, (qk, ov_out, ov_in, v)):
        before = params[d.param].detach().double().clone()
        with patch(model, list(group)):
            after = params[d.param].detach().double().clone()
        want = before.clone()
        want[d.rows, d.cols] += d.left.double() @ d.right.double()
        assert (after - want).abs().max() < 1e-6 and (after - before).abs().max() > 1e-3
