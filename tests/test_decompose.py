"""Decompositions: the DESIGN.md invariant, agreement with a dense float64 numpy SVD, signs, caching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import surgery
import surgery.core.decomposition as dec
from surgery.core.state import state
from tests.conftest import build
from tests.reference import reference_matrix, reference_weights


def _each_weight(a, model=None):
    """(block, weight, head), plus the dense reference matrix when a model is given."""
    for block in range(a.n_blocks):
        ref = reference_weights(model, block) if model is not None else None
        for weight, head in [("K", None), ("V", None)] + [(w, h) for h in range(a.n_heads) for w in ("OV", "QK")]:
            if model is None:
                yield block, weight, head
            else:
                yield block, weight, head, reference_matrix(model, block, weight, head, r=ref)


def test_orientation_invariant_for_every_triple(any_model):
    """U[:, i] @ W == S[i] * V[:, i] with W the module's own matrix, for every weight and triple."""
    a = surgery.wrap(any_model)
    for block, weight, head, W in _each_weight(a, any_model):
        W = torch.from_numpy(W)
        U, S, V = surgery.decompose(any_model, block=block, weight=weight, head=head)
        assert U.dtype == torch.float64 and U.shape[1] == S.shape[0] == V.shape[1] == a.rank(weight)
        torch.testing.assert_close(U.T @ W, S[:, None] * V.T, atol=1e-12, rtol=0)
        torch.testing.assert_close(W @ V, U * S, atol=1e-12, rtol=0)


def test_reconstruction_and_agreement_with_numpy(any_model):
    """Singular values equal numpy's dense float64 SVD; triples reconstruct the matrix; bases orthonormal."""
    a = surgery.wrap(any_model)
    for block, weight, head, W in _each_weight(a, any_model):
        svd = surgery.decompose(any_model, block=block, weight=weight, head=head)
        U, S, V = (t.numpy() for t in svd)
        ref_S = np.linalg.svd(W, compute_uv=False)[: len(S)]
        np.testing.assert_allclose(S, ref_S, atol=1e-12)
        np.testing.assert_allclose(svd.dense().numpy(), W, atol=1e-12)
        np.testing.assert_allclose(U.T @ U, np.eye(len(S)), atol=1e-12)
        np.testing.assert_allclose(V.T @ V, np.eye(len(S)), atol=1e-12)


def test_factored_ov_and_qk_equal_dense_svd_vectors():
    """The QR-factored route gives numpy's dense singular vectors (up to sign) for OV and QK."""
    model = build("gpt2", square=True)
    for weight in ("OV", "QK"):
        batched = surgery.decompose(model, block=1, weight=weight)
        for h in range(3):
            W = reference_matrix(model, 1, weight, h)
            U_ref, S_ref, Vh_ref = np.linalg.svd(W)
            r = batched.S.shape[-1]
            # Tiny random heads have well-separated singular values, so each vector is unique up to sign.
            assert np.min(np.diff(-S_ref[:r])) > 1e-6
            cos_u = np.abs(np.sum(batched.U[h].numpy() * U_ref[:, :r], axis=0))
            cos_v = np.abs(np.sum(batched.V[h].numpy() * Vh_ref[:r].T, axis=0))
            np.testing.assert_allclose(cos_u, 1, atol=1e-9)
            np.testing.assert_allclose(cos_v, 1, atol=1e-9)
            single = surgery.decompose(model, block=1, weight=weight, head=h)
            assert torch.equal(single.U, batched.U[h]) and single.head == h


def test_sign_rule():
    """The anchor vector's largest-magnitude entry is positive; recomputation gives identical bits."""
    model = build("dt", square=True)
    a = surgery.wrap(model)
    for block, weight, head in _each_weight(a):
        svd = surgery.decompose(model, block=block, weight=weight, head=head)
        anchor = svd.vectors(dec.DEFAULT_SIDE[weight])
        top = anchor.gather(0, anchor.abs().argmax(0, keepdim=True))
        assert (top > 0).all()
    first = surgery.decompose(model, block=0, weight="OV")
    state(a).svd_cache.clear()
    again = surgery.decompose(model, block=0, weight="OV")
    assert first is not again and all(torch.equal(x, y) for x, y in zip(first, again))


def test_fix_signs_tie_goes_to_first_entry():
    U = torch.tensor([[-1.0], [1.0]])
    V = torch.tensor([[2.0], [3.0]])
    U2, V2 = dec.fix_signs(U, V, "in")
    assert U2[:, 0].tolist() == [1.0, -1.0] and V2[:, 0].tolist() == [-2.0, -3.0]


def test_fold_ln_multiplies_the_read_side_by_the_gain(any_model):
    a = surgery.wrap(any_model)
    ref = reference_weights(any_model, 1)
    g_attn, g_mlp = ref["ln_1"], ref["ln_2"]
    for weight, head, want in (
        ("K", None, np.diag(g_mlp) @ ref["K"]),
        ("OV", 2, np.diag(g_attn) @ ref["W_V"][2] @ ref["W_O"][2]),
        ("QK", 1, np.diag(g_attn) @ ref["W_Q"][1] @ ref["W_K"][1].T @ np.diag(g_attn)),
        ("V", None, ref["V"]),  # nothing normalises the MLP activations V reads
    ):
        svd = surgery.decompose(any_model, block=1, weight=weight, head=head, fold_ln=True)
        np.testing.assert_allclose(svd.dense().numpy(), want, atol=1e-12)
        np.testing.assert_allclose(svd.S.numpy(), np.linalg.svd(want, compute_uv=False)[: a.rank(weight)], atol=1e-12)


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_decompose_in_float64(weight_dtype):
    model = build("gptj", square=True).to(weight_dtype)
    W = model.transformer.h[0].mlp.fc_in.weight.T.double()
    for dtype in (torch.float64, torch.float32):
        U, S, V = surgery.decompose(model, block=0, weight="K", dtype=dtype)
        assert U.dtype == dtype
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(U.double().T @ W, (S[:, None] * V.T).double(), atol=tol, rtol=tol)


def test_cache_hits_and_invalidation(monkeypatch):
    model = build("gpt2")
    calls = []
    real = dec._compute
    monkeypatch.setattr(dec, "_compute", lambda *args: calls.append(args[1:3]) or real(*args))
    first = surgery.decompose(model, block=0, weight="K")
    assert surgery.decompose(model, block=0, weight="K") is first and len(calls) == 1
    surgery.decompose(model, block=0, weight="K", fold_ln=True)
    assert len(calls) == 2
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1.0  # an in-place edit outside any patch
    changed = surgery.decompose(model, block=0, weight="K")
    assert len(calls) == 3 and not torch.equal(changed.S, first.S)
    with torch.no_grad():
        model.transformer.h[0].ln_2.weight.mul_(2)  # the gain is a source of the folded SVD only
    surgery.decompose(model, block=0, weight="K")
    assert len(calls) == 3
    surgery.decompose(model, block=0, weight="K", fold_ln=True)
    assert len(calls) == 4


def test_patch_sweep_reuses_the_cached_svd(monkeypatch):
    """Patching the same weight again and again decomposes it once; inside a patch the edit is seen."""
    model = build("dt")
    calls = []
    real = dec._compute
    monkeypatch.setattr(dec, "_compute", lambda *args: calls.append(args[1:3]) or real(*args))
    base = surgery.decompose(model, block=1, weight="K")
    for idx in range(5):
        with surgery.patch(model, block=1, weight="K", idx=idx, op="zero"):
            pass
    assert calls == [(1, "K")]
    assert surgery.decompose(model, block=1, weight="K") is base
    for head in range(3):
        with surgery.patch(model, block=0, weight="OV", head=head, idx=0, op="scale", value=2.0):
            pass
    assert calls == [(1, "K"), (0, "OV")]
    with surgery.patch(model, block=1, weight="K", idx=2, op="zero"):
        inside = surgery.decompose(model, block=1, weight="K")
        assert inside.S[-1] < 1e-6 * inside.S[0] and len(calls) == 3  # float32 weights
    assert surgery.decompose(model, block=1, weight="K") is base


def test_nested_patches_on_one_parameter_keep_the_cache_valid(monkeypatch):
    model = build("gpt2")
    calls = []
    real = dec._compute
    monkeypatch.setattr(dec, "_compute", lambda *args: calls.append(args[1:3]) or real(*args))
    base = surgery.decompose(model, block=0, weight="K")
    with surgery.patch(model, block=0, weight="K", idx=0, op="zero"):
        with surgery.patch(model, block=0, weight="K", idx=1, op="zero"):  # decomposes the edited weight
            pass
        surgery.decompose(model, block=0, weight="K")  # the outer patch's weight: still cached
    assert len(calls) == 2
    assert surgery.decompose(model, block=0, weight="K") is base


@pytest.mark.parametrize("kwargs, message", [
    (dict(block=2, weight="K"), r"block=2 is out of range: this model has 2 blocks \(valid: 0..1\)"),
    (dict(block=-1, weight="K"), r"block=-1 is out of range"),
    (dict(block=0, weight="W_in"), r"weight='W_in' is not a weight name; valid: 'K', 'V', 'OV', 'QK'"),
    (dict(block=0, weight="OV", head=3), r"head=3 is out of range: this model has 3 heads \(valid: 0..2"),
    (dict(block=0, weight="K", head=0), r"head=0 given for weight 'K', which is per block"),
    (dict(block=0, weight="K", dtype=torch.float16), r"dtype=torch.float16 is not supported"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        surgery.decompose(build("gpt2"), **kwargs)


def test_a_dtype_change_is_not_served_a_stale_decomposition():
    """`model.to(dtype)` keeps each parameter's identity and version counter but swaps its data."""
    model = build("gpt2")
    before = surgery.decompose(model, 0, "K").S.clone()
    model.to(torch.bfloat16)
    after = surgery.decompose(model, 0, "K").S
    state(model).svd_cache.clear()
    fresh = surgery.decompose(model, 0, "K").S
    assert torch.equal(after, fresh) and not torch.equal(before, fresh)



def test_a_stamp_keeps_its_address_from_being_reused():
    """`.data =` (what model.to does) keeps identity and version counter, and frees the old data."""
    from surgery.core.decomposition import ContentStamp

    for _ in range(10):  # unheld, the freed address came back among 5 new tensors in 5-8 of 10 trials
        t = torch.randn(65536)
        first = ContentStamp(t)
        t.data = t.data.to(torch.float8_e5m2).to(torch.float32)
        same_size = [torch.empty(65536) for _ in range(5)]
        assert ContentStamp(t) != first and ContentStamp(t) == ContentStamp(t)
        assert all(x.data_ptr() != first.key[2] for x in same_size)  # key: (id, version, address, dtype, device)


def test_a_dtype_round_trip_is_not_served_a_stale_decomposition():
    """float32 -> float8 -> float32: same dtype, identity and version counter, new contents."""
    model = build("gpt2")
    before = surgery.decompose(model, 0, "K").S.clone()
    model.to(torch.float8_e5m2).to(torch.float32)
    after = surgery.decompose(model, 0, "K").S
    state(model).svd_cache.clear()
    fresh = surgery.decompose(model, 0, "K").S
    assert torch.equal(after, fresh) and not torch.allclose(before, fresh, rtol=1e-3)
