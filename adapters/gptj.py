"""GPT-J (`GPTJForCausalLM`, `GPTJModel`): `nn.Linear` weights are stored `[out, in]` and transposed here."""
from __future__ import annotations

from adapters.gpt2 import GPT2Adapter, _view
from adapters.registry import register


@register
class GPTJAdapter(GPT2Adapter):
    """GPT-J: parallel attention and MLP reading the same `ln_1`; rotary positions on Q and K.

    QK is `W_Q @ W_K.T` without the rotary rotation, i.e. the bilinear form between tokens at
    the same position (relative offset 0); at other offsets the rotary dims are rotated.
    """

    model_classes = ("GPTJForCausalLM", "GPTJModel")

    def mlp_in(self, block):
        return self.blocks()[block].mlp.fc_in.weight.T  # Linear [d_mlp, d_model] -> [d_model, d_mlp]

    def mlp_out(self, block):
        return self.blocks()[block].mlp.fc_out.weight.T  # Linear [d_model, d_mlp] -> [d_mlp, d_model]

    def attn_weights(self, block):
        attn = self.blocks()[block].attn
        h = self.n_heads
        # q/k/v_proj: Linear [d_model(out), d_model(in)]; head h owns output rows h*d_head:(h+1)*d_head.
        split = {n: _view(getattr(attn, p).weight, "(h dh) d -> h d dh", h=h)
                 for n, p in (("W_Q", "q_proj"), ("W_K", "k_proj"), ("W_V", "v_proj"))}
        # out_proj: Linear [d_model(out), d_model(in)]; head h owns input columns h*d_head:(h+1)*d_head.
        split["W_O"] = _view(attn.out_proj.weight, "d (h dh) -> h dh d", h=h)
        return split

    def ln_before(self, block, weight):
        return None if weight == "V" else self.blocks()[block].ln_1  # parallel block: one LayerNorm
