"""The TransformerLens adapter: views of the bridge's real parameters, agreement with TL's FactoredMatrix and
with the Hugging Face adapter of the same weights, patches that change TL's forward and restore bitwise."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformer_lens")

import adapters.transformer_lens as tl_adapter  # noqa: E402  (registers the adapter until adapters/__init__ does)
import surgery  # noqa: E402
from tests.conftest import assert_bitwise_equal, snapshot  # noqa: E402
from tests.lm_fixtures import bridge_of, has_hooked_transformer, hooked_of, make_tokenizer, saved_model, token_batch  # noqa: E402
from tests.reference import reference_weights  # noqa: E402

FLAVOURS = [("bridge", "gpt2"), ("bridge", "gptj")] + [
    pytest.param(("hooked", k), marks=pytest.mark.skipif(not has_hooked_transformer(),
                                                         reason="HookedTransformer needs transformer-lens < 4"))
    for k in ("gpt2", "gptj")]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(params=FLAVOURS, ids=lambda f: "-".join(f))
def bridged(request, tmp_path, tokenizer):
    """(TL model, HF model with the same weights) of a tiny square (d_mlp == d_model) model saved to and loaded
    from disk: a 4.x TransformerBridge, or (TL < 4) a HookedTransformer loaded through TL's weight converters."""
    flavour, kind = request.param
    model = saved_model(kind, tmp_path / kind)
    return (bridge_of if flavour == "bridge" else hooked_of)(model, tokenizer)


def _logits(bridge, tokens):
    with torch.no_grad():
        return bridge(tokens, return_type="logits")


def test_registered_and_dimensions(bridged):
    bridge, ref = bridged
    a = surgery.wrap(bridge)
    assert type(a) is tl_adapter.TransformerLensAdapter and surgery.wrap(bridge) is a
    hf = surgery.wrap(ref)
    assert (a.n_blocks, a.n_heads, a.d_model, a.d_head, a.d_mlp) == (hf.n_blocks, hf.n_heads, hf.d_model, hf.d_head, hf.d_mlp)
    assert {"TransformerBridge", "HookedTransformer"} <= set(surgery.supported())


def test_views_equal_the_module_matrices_and_share_parameter_storage(bridged):
    """Every weight equals the matrix HF's module applies (read off by identity), and is a view of a Parameter."""
    bridge, ref = bridged
    a = surgery.wrap(bridge)
    for block in range(a.n_blocks):
        r = reference_weights(ref, block)
        got = {"K": a.mlp_in(block), "V": a.mlp_out(block), **a.attn_weights(block)}
        for name, t in got.items():
            want = np.stack(r[name]) if name.startswith("W_") else r[name]
            np.testing.assert_array_equal(t.detach().double().numpy(), want.astype(np.float32).astype(np.float64))
            base = t._base if t._base is not None else t
            assert isinstance(base, torch.nn.Parameter), name


def test_decompose_agrees_with_factored_matrix_ov_svd(bridged):
    """Our OV triples against TransformerLens's own FactoredMatrix SVD (computed by TL, in float32)."""
    bridge, _ = bridged
    a = surgery.wrap(bridge)
    fm = bridge.OV  # FactoredMatrix [n_layers, n_heads, d_model, d_model]
    U_tl, S_tl, V_tl = (t.detach().double() for t in fm.svd())
    for block in range(a.n_blocks):
        ours = surgery.decompose(bridge, block=block, weight="OV")
        np.testing.assert_allclose(ours.S.numpy(), S_tl[block, :, : a.d_head].numpy(), rtol=1e-5, atol=1e-6)
        # Tiny random heads have distinct singular values, so each vector is unique up to sign.
        cos_u = (ours.U * U_tl[block, :, :, : a.d_head]).sum(-2).abs()
        cos_v = (ours.V * V_tl[block, :, :, : a.d_head]).sum(-2).abs()
        np.testing.assert_allclose(cos_u.numpy(), 1, atol=1e-4)
        np.testing.assert_allclose(cos_v.numpy(), 1, atol=1e-4)


def test_same_singular_values_as_the_hf_adapter(bridged):
    bridge, ref = bridged
    a = surgery.wrap(bridge)
    for block in range(a.n_blocks):
        for weight in ("K", "V", "OV", "QK"):
            for fold_ln in (False, True):
                tl = surgery.decompose(bridge, block=block, weight=weight, fold_ln=fold_ln)
                hf = surgery.decompose(ref, block=block, weight=weight, fold_ln=fold_ln)
                torch.testing.assert_close(tl.S, hf.S, atol=1e-12, rtol=0)
                torch.testing.assert_close(tl.dense(), hf.dense(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("weight, head, op, value", [
    ("K", None, "constant", 0.3), ("V", None, "constant", 0.3), ("OV", 1, "constant", 0.3),
    ("QK", 2, "scale", 300.0),  # tiny random QK scores barely move the logits unless scaled up
])
def test_patch_changes_tl_forward_like_the_hf_patch_and_restores_bitwise(bridged, weight, head, op, value):
    bridge, ref = bridged
    tokens = token_batch()
    before, snap, params = _logits(bridge, tokens), snapshot(bridge), dict(bridge.named_parameters())
    with torch.no_grad():
        ref_before = ref(input_ids=tokens).logits
    torch.testing.assert_close(before, ref_before, atol=1e-5, rtol=1e-5)
    edit = dict(block=1, weight=weight, head=head, idx=0, op=op, value=value)
    with surgery.patch(bridge, **edit):
        patched = _logits(bridge, tokens)
        with surgery.patch(ref, **edit):  # the same edit through the independent HF adapter
            with torch.no_grad():
                ref_patched = ref(input_ids=tokens).logits
    assert (patched - before).abs().max() > 1e-3, "the patch did not reach TransformerLens's forward"
    torch.testing.assert_close(patched, ref_patched, atol=1e-5, rtol=1e-5)
    assert_bitwise_equal(bridge, snap)
    assert all(p is params[n] for n, p in bridge.named_parameters())
    assert torch.equal(_logits(bridge, tokens), before)


def test_hooks_read_and_replace_activations(bridged):
    bridge, ref = bridged
    a, hf = surgery.wrap(bridge), surgery.wrap(ref)
    tokens = token_batch()
    _, cache = a.run_with_cache(tokens)
    _, ref_cache = hf.run_with_cache(input_ids=tokens)
    assert set(cache) == set(ref_cache) == set(a.hook_names)
    for name in ref_cache:
        torch.testing.assert_close(cache[name], ref_cache[name], atol=1e-5, rtol=1e-5, msg=name)
    # A replacement flows downstream: zeroing the hidden MLP activations leaves only V's bias.
    with a.hooks({"blocks.0.mlp_hidden": lambda t, name: torch.zeros_like(t)}):
        _, zeroed = a.run_with_cache(tokens, names=["blocks.0.mlp_out"])
    bias = bridge.blocks[0].mlp.b_out
    torch.testing.assert_close(zeroed["blocks.0.mlp_out"], bias.expand_as(zeroed["blocks.0.mlp_out"]))


def test_token_labels_from_the_tokenizer_or_by_id(bridged):
    bridge, _ = bridged
    sets = surgery.wrap(bridge).embedding_sets()
    assert sets["token_in"].labels[7] == "w7" and sets["token_out"].labels[-1] == "w49"
    assert sets["token_out"].vectors.shape == sets["token_in"].vectors.shape == (50, 24)
    bare = tl_adapter.TransformerLensAdapter(bridge)
    bare.tokenizer = None
    assert bare.embedding_sets()["token_in"].labels[7] == "#7"


def test_compatibility_mode_weights_are_live_too(tmp_path, tokenizer):
    """After enable_compatibility_mode (LayerNorm folded, weights centred) the adapter sees what the forward uses."""
    bridge, _ = bridge_of(saved_model("gpt2", tmp_path / "m"), tokenizer)
    bridge.enable_compatibility_mode()
    tokens = token_batch()
    before, snap = _logits(bridge, tokens), snapshot(bridge)
    folded = surgery.decompose(bridge, block=0, weight="K", fold_ln=True)
    torch.testing.assert_close(folded.S, surgery.decompose(bridge, block=0, weight="K").S)  # the gain is now 1
    with surgery.patch(bridge, block=0, weight="OV", head=0, idx=0, op="zero"):
        assert not torch.equal(_logits(bridge, tokens), before)
    assert_bitwise_equal(bridge, snap)
    assert torch.equal(_logits(bridge, tokens), before)


def test_a_copy_is_refused_before_anything_is_edited():
    """An accessor that returns a computed tensor (not a view) cannot be patched: say so instead of editing a copy."""
    class Cfg:
        n_layers, n_heads, d_model, d_head, d_mlp = 1, 2, 4, 2, 8

    class MLP:
        W_in = torch.randn(4, 8)  # a plain tensor: what a quantised or processed accessor would return

    class Block:
        mlp = MLP()

    class TransformerBridge(torch.nn.Module):  # matched by class name, like the real one
        cfg = Cfg()
        blocks = [Block()]

    a = surgery.wrap(TransformerBridge())
    with pytest.raises(tl_adapter.NotAView, match=r"blocks\.0\.mlp\.W_in is a computed copy"):
        a.mlp_in(0)


def test_grouped_query_attention_is_refused():
    class Cfg:
        n_layers, n_heads, d_model, d_head, d_mlp, n_key_value_heads = 1, 4, 8, 2, 8, 2

    class TransformerBridge(torch.nn.Module):
        cfg = Cfg()

    with pytest.raises(ValueError, match=r"grouped-query attention \(n_key_value_heads=2, n_heads=4\)"):
        surgery.wrap(TransformerBridge())
