"""Adapters: declared shapes, `[d_in, d_out]` orientation against the modules themselves, embeddings, hooks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import adapters
import surgery
from tests.conftest import KINDS, build, example_inputs, outputs
from tests.reference import reference_weights


def test_declared_dimensions(any_model):
    a = surgery.wrap(any_model)
    c = any_model.config
    assert (a.n_blocks, a.n_heads, a.d_model) == (c.n_layer, c.n_head, 24)
    assert a.d_head * a.n_heads == a.d_model
    assert a.d_mlp == c.n_inner
    assert len(a.blocks()) == a.n_blocks


def test_weight_views_match_the_modules(any_model):
    """Every weight view equals the matrix the module itself applies (independent reference)."""
    a = surgery.wrap(any_model)
    for block in range(a.n_blocks):
        ref = reference_weights(any_model, block)
        np.testing.assert_allclose(a.mlp_in(block).double().detach().numpy(), ref["K"], atol=1e-12)
        np.testing.assert_allclose(a.mlp_out(block).double().detach().numpy(), ref["V"], atol=1e-12)
        w = a.attn_weights(block)
        assert w["W_Q"].shape == (a.n_heads, a.d_model, a.d_head)
        assert w["W_O"].shape == (a.n_heads, a.d_head, a.d_model)
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            for h in range(a.n_heads):
                np.testing.assert_allclose(w[name][h].double().detach().numpy(), ref[name][h], atol=1e-12)


def test_weight_views_share_storage_with_parameters(any_model):
    """An in-place edit through a view changes the model (that is how patches work)."""
    a = surgery.wrap(any_model)
    w = a.attn_weights(1)
    params = {id(p) for p in any_model.parameters()}
    for t in (a.mlp_in(1), a.mlp_out(1), *w.values()):
        assert id(t._base if t._base is not None else t) in params


def test_attention_output_from_views_matches_forward():
    """Single-token attention is the OV circuit: the output equals sum_h (x W_V[h] + b_V) W_O[h] + b_O."""
    for kind in ("gpt2", "gptj", "dt"):
        model = build(kind, square=True)
        a = surgery.wrap(model)
        blk = a.blocks()[0]
        x = torch.randn(1, 1, a.d_model)
        with torch.no_grad():
            xn = blk.ln_1(x)
            if kind == "gptj":
                pos = torch.zeros(1, 1, dtype=torch.long)
                body = model.transformer
                got = blk.attn(xn, position_embeddings=body.rotary_emb(xn, position_ids=pos))[0]
                b_v, b_o = torch.zeros(a.d_model), torch.zeros(a.d_model)  # GPT-J has no attention biases
            else:
                got = blk.attn(xn)[0]
                b_v = blk.attn.c_attn.bias[2 * a.d_model:]
                b_o = blk.attn.c_proj.bias
            w = a.attn_weights(0)
            want = b_o.clone()
            for h in range(a.n_heads):
                v = xn[0, 0] @ w["W_V"][h] + b_v[h * a.d_head:(h + 1) * a.d_head]
                want += v @ w["W_O"][h]
        torch.testing.assert_close(got[0, 0], want, atol=1e-5, rtol=1e-5)


def test_attention_pattern_from_views_matches_forward():
    """QK orientation: softmax((x W_Q + b_Q)(x W_K + b_K)^T / sqrt(d_head)) is the model's own pattern."""
    for kind in ("gpt2", "gptj"):
        model = build(kind, square=True)
        model.config._attn_implementation = "eager"
        a = surgery.wrap(model)
        ids = torch.randint(0, 50, (1, 6))
        # At position 0 everywhere GPT-J's rotary rotation is the identity, so QK is exactly W_Q W_K^T.
        kw = {"position_ids": torch.zeros(1, 6, dtype=torch.long)} if kind == "gptj" else {}
        with torch.no_grad():
            out, cache = a.run_with_cache(input_ids=ids, output_attentions=True, **kw)
            x = a.blocks()[1].ln_1(cache["blocks.1.resid_pre"])[0]
            w = a.attn_weights(1)
            for h in range(a.n_heads):
                sl = slice(h * a.d_head, (h + 1) * a.d_head)
                if kind == "gptj":
                    bq = bk = torch.zeros(a.d_head)
                else:
                    bias = a.blocks()[1].attn.c_attn.bias
                    bq, bk = bias[: a.d_model][sl], bias[a.d_model: 2 * a.d_model][sl]
                scores = (x @ w["W_Q"][h] + bq) @ (x @ w["W_K"][h] + bk).T / a.d_head ** 0.5
                scores = scores.masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf"))
                torch.testing.assert_close(out.attentions[1][0, h], scores.softmax(-1), atol=1e-5, rtol=1e-5)


def test_layernorm_before_each_read(any_model):
    """K reads ln_2(resid_pre + attn_out) in GPT-2 and ln_1(resid_pre) in GPT-J's parallel block."""
    a = surgery.wrap(any_model)
    _, cache = a.run_with_cache(**example_inputs(any_model))
    for i in range(a.n_blocks):
        parallel = type(any_model).__name__.startswith("GPTJ")
        ln_in = cache[f"blocks.{i}.resid_pre"] + (0 if parallel else cache[f"blocks.{i}.attn_out"])
        with torch.no_grad():
            torch.testing.assert_close(a.ln_before(i, "K")(ln_in), cache[f"blocks.{i}.mlp_in"])
        assert a.ln_before(i, "OV") is a.blocks()[i].ln_1 and a.ln_before(i, "QK") is a.blocks()[i].ln_1
        assert a.ln_before(i, "V") is None


def test_dt_embedding_sets_are_what_the_model_adds_and_reads():
    model = build("dt")
    a = surgery.wrap(model)
    sets = a.embedding_sets()
    assert set(sets) == {"state_in", "action_in", "return_in", "time_in", "state_out", "action_out", "return_out"}
    with torch.no_grad():
        # Input sets: the vector one unit of input dimension j adds to the residual stream.
        for name, mod, dim in (("state_in", model.embed_state, 5), ("action_in", model.embed_action, 3),
                               ("return_in", model.embed_return, 1)):
            want = mod(torch.eye(dim)) - mod.bias
            torch.testing.assert_close(sets[name].vectors, want)
            assert sets[name].side == "in" and len(sets[name].labels) == dim
        torch.testing.assert_close(sets["time_in"].vectors[7], model.embed_timestep(torch.tensor(7)))
        assert sets["time_in"].labels[7] == "t=7"
        # Output sets: row j is the direction output j reads: head(h)_j = h . row_j + bias_j.
        h = torch.randn(4, 24)
        for name, mod in (("state_out", model.predict_state), ("action_out", model.predict_action[0]),
                          ("return_out", model.predict_return)):
            torch.testing.assert_close(h @ sets[name].vectors.T + mod.bias, mod(h))
            assert sets[name].side == "out"


def test_dt_labels_come_from_metadata():
    from surgery.behaviour.envs import HOPPER
    from surgery.behaviour.metadata import DTMetadata

    model = build("dt")
    meta = DTMetadata(env_id="X-v0", state_dim=5, act_dim=3, state_names=list(HOPPER.state_names[:5]),
                      action_names=list(HOPPER.action_names))
    a = surgery.load(model, metadata=meta)
    assert list(a.embedding_sets()["action_out"].labels) == ["thigh", "leg", "foot"]
    assert list(a.embedding_sets()["state_in"].labels) == list(HOPPER.state_names[:5])


@pytest.mark.parametrize("kind", ["gpt2", "gpt2-body", "gptj", "gptj-body"])
def test_lm_embedding_sets(kind):
    model = build(kind)
    a = surgery.wrap(model)
    sets = a.embedding_sets()
    body = getattr(model, "transformer", model)
    assert torch.equal(sets["token_in"].vectors, body.wte.weight.detach())
    if kind == "gptj-body":
        assert "token_out" not in sets  # GPT-J's unembedding is untied, and a bare GPTJModel has none
    elif kind == "gpt2-body":
        assert torch.equal(sets["token_out"].vectors, body.wte.weight.detach())  # GPT-2 ties them
    else:
        h = torch.randn(3, 24)
        with torch.no_grad():
            torch.testing.assert_close(h @ sets["token_out"].vectors.T + (model.lm_head.bias if model.lm_head.bias
                                       is not None else 0), model.lm_head(h))
    assert sets["token_in"].labels[3] == "#3" and len(sets["token_in"].labels) == 50


def test_token_labels_use_a_tokenizer():
    class Tok:
        def decode(self, ids):
            return "".join(chr(97 + i % 26) for i in ids)

    a = surgery.load(build("gpt2"), tokenizer=Tok())
    assert a.embedding_sets()["token_out"].labels[2] == "c"
    assert a.embedding_sets()["token_out"].labels[0:3] == ["a", "b", "c"]


def test_same_hook_names_for_every_architecture():
    names = {kind: set(surgery.wrap(build(kind)).hook_names) for kind in KINDS}
    first = names["dt"]
    assert all(n == first for n in names.values())
    for point in adapters.BLOCK_HOOKS:
        assert f"blocks.1.{point}" in first
    assert {"embed", "final"} <= first


def test_run_with_cache_is_consistent(any_model):
    """The cached residual stream adds up: resid_post = resid_pre + attn_out + mlp_out."""
    a = surgery.wrap(any_model)
    out, cache = a.run_with_cache(**example_inputs(any_model))
    assert set(cache) == set(a.hook_names)
    for i in range(a.n_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.resid_post"], cache[f"blocks.{i}.resid_pre"]
                                   + cache[f"blocks.{i}.attn_out"] + cache[f"blocks.{i}.mlp_out"])
        if i:
            assert torch.equal(cache[f"blocks.{i}.resid_pre"], cache[f"blocks.{i - 1}.resid_post"])
    assert cache["blocks.0.mlp_hidden"].shape[-1] == a.d_mlp
    assert torch.equal(cache["blocks.0.resid_pre"], cache["embed"])


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_replace_values_and_are_removed(any_model):
    a = surgery.wrap(any_model)
    inputs = example_inputs(any_model)
    clean = outputs(any_model, inputs)
    with a.hooks({"blocks.1.mlp_out": lambda t, name: torch.zeros_like(t)}):
        ablated = outputs(any_model, inputs)
    assert not torch.equal(clean[0], ablated[0])
    assert _hook_count(any_model) == 0
    after = outputs(any_model, inputs)
    assert all(torch.equal(x, y) for x, y in zip(clean, after))


def test_hooks_are_removed_after_errors(any_model):
    a = surgery.wrap(any_model)

    def boom(t, name):
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"):
        with a.hooks({"blocks.0.attn_out": boom, "final": lambda t, n: None}):
            any_model(**example_inputs(any_model))
    assert _hook_count(any_model) == 0
    with pytest.raises(ValueError, match="unknown hook point.*blocks.\\{0..1\\}"):
        with a.hooks({"blocks.0.attn_out": boom, "blocks.9.mlp_out": boom}):
            pass
    assert _hook_count(any_model) == 0


def test_existing_hooks_of_the_user_survive(any_model):
    """Only the hooks the context manager added are removed."""
    a = surgery.wrap(any_model)
    handle = a.blocks()[0].register_forward_hook(lambda *args: None)
    with a.hooks({"blocks.0.resid_post": lambda t, n: None}):
        pass
    assert _hook_count(any_model) == 1
    handle.remove()


def test_wrap_returns_one_adapter_per_model():
    model = build("gpt2")
    assert surgery.wrap(model) is surgery.wrap(model) is surgery.load(model)
    assert surgery.wrap(build("gpt2")) is not surgery.wrap(model)


def test_unsupported_model_lists_the_supported_ones():
    with pytest.raises(TypeError, match="no adapter for a Linear.*GPT2LMHeadModel.*GPTJForCausalLM"):
        surgery.wrap(nn.Linear(2, 2))


def test_third_party_adapter_registers():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc_in, self.fc_out = nn.Linear(4, 6), nn.Linear(6, 4)

    @adapters.register
    class TinyAdapter(adapters.Adapter):
        model_classes = ("Tiny",)

        def __init__(self, model):
            super().__init__(model)
            self.n_blocks, self.n_heads, self.d_model, self.d_head, self.d_mlp = 1, 1, 4, 4, 6

        def mlp_in(self, block):
            return self.model.fc_in.weight.T

        def mlp_out(self, block):
            return self.model.fc_out.weight.T

    try:
        model = Tiny()
        assert "Tiny" in surgery.supported()
        U, S, V = surgery.decompose(model, block=0, weight="K")
        torch.testing.assert_close(U.T @ model.fc_in.weight.T.double(), S[:, None] * V.T)
        with surgery.patch(model, block=0, weight="V", idx=1, op="zero"):
            assert torch.linalg.matrix_rank(model.fc_out.weight).item() == 3
    finally:
        adapters.registry._ADAPTERS.remove(TinyAdapter)
