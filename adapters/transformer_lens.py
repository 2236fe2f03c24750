"""TransformerLens models (4.x `TransformerBridge`, TL 3's `HookedTransformer`): analyse and patch them.

TransformerLens already exposes every weight in this project's row-vector layout (`W_Q, W_K, W_V`
`[n_heads, d_model, d_head]`, `W_O [n_heads, d_head, d_model]`, `W_in [d_model, d_mlp]`,
`W_out [d_mlp, d_model]`, `W_E [d_vocab, d_model]`, `W_U [d_model, d_vocab]`), so this adapter
declares that layout and reads TL's own accessors. On a bridge those accessors are views of the
parameters its forward uses (GPT-2's fused `c_attn` is split into q/k/v `Linear`s that share its
storage and version counter); every accessor is checked to be such a view, because a patch
applied to a copy would silently change nothing.

Importing this module does not import transformer_lens (a seven-second import): models are
matched by class name.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from adapters.base import Adapter, EmbeddingSet, LazyLabels
from adapters.registry import register
from surgery.errors import SurgeryError


class NotAView(TypeError):
    """A TransformerLens accessor returned a copy, so edits through it would not reach the model."""


def _live(t: torch.Tensor, what: str) -> torch.Tensor:
    """`t` itself if it is a parameter or a view of one (an in-place edit reaches the model); else raise."""
    base = t._base if t._base is not None else t
    if not isinstance(base, nn.Parameter):
        raise NotAView(f"{what} is a computed copy ({type(base).__name__} {tuple(t.shape)}), not a view of a "
                       "parameter, so a patch through it would not change the model; supported: TransformerBridge "
                       "and HookedTransformer models whose weights are plain (unquantised) parameters")
    return t


@register
class TransformerLensAdapter(Adapter):
    """A TransformerLens `TransformerBridge` or `HookedTransformer`, through TL's own weight accessors."""

    model_classes = ("TransformerBridge", "HookedTransformer")

    # TL's HookPoints are identity modules in the data path: a forward hook's return value replaces the
    # activation, exactly as a "post" point expects. Names are TL's hook_dict names.
    hook_table = {
        "embed": ("blocks.0.hook_resid_pre", "post"),
        "resid_pre": ("hook_resid_pre", "post"),
        "attn_out": ("hook_attn_out", "post"),
        # The MLP's input is its LayerNorm's output, gain and bias applied. The bridge hooks it as mlp.hook_in;
        # HookedTransformer's ln.hook_normalized fires before the gain, so there hook the LayerNorm itself
        # (ln2, or ln1 in a parallel block, which has no ln2).
        "mlp_in": (("mlp.hook_in", "ln2", "ln1"), "post"),
        "mlp_hidden": ("mlp.hook_post", "post"),
        "mlp_out": ("hook_mlp_out", "post"),
        "resid_post": ("hook_resid_post", "post"),
        "final": (("ln_final.hook_out", "ln_final"), "post"),
    }

    def __init__(self, model):
        super().__init__(model)
        c = model.cfg
        self.n_blocks, self.n_heads, self.d_model, self.d_head = c.n_layers, c.n_heads, c.d_model, c.d_head
        self.d_mlp = c.d_mlp
        kv = getattr(c, "n_key_value_heads", None)
        if kv not in (None, c.n_heads):
            raise SurgeryError(f"grouped-query attention (n_key_value_heads={kv}, n_heads={c.n_heads}) is not "
                               "supported: OV needs one W_V per head; supported: multi-head attention (GPT-2, GPT-J...)")
        if getattr(c, "gated_mlp", False) or getattr(c, "attn_only", False) or getattr(c, "num_experts", None):
            raise SurgeryError("gated, mixture-of-experts and attention-only MLPs are not supported: K and V need one "
                               "W_in and one W_out per block; supported: GPT-2- and GPT-J-style MLPs")
        self.parallel = bool(getattr(c, "parallel_attn_mlp", False))
        self.tokenizer = getattr(model, "tokenizer", None)

    def blocks(self):
        return self.model.blocks

    def mlp_in(self, block):
        return _live(self.blocks()[block].mlp.W_in, f"blocks.{block}.mlp.W_in")

    def mlp_out(self, block):
        return _live(self.blocks()[block].mlp.W_out, f"blocks.{block}.mlp.W_out")

    def attn_weights(self, block):
        attn = self.blocks()[block].attn
        return {n: _live(getattr(attn, n), f"blocks.{block}.attn.{n}") for n in ("W_Q", "W_K", "W_V", "W_O")}

    def ln_before(self, block, weight):
        if weight == "V":
            return None
        b = self.blocks()[block]
        ln = b.ln2 if weight == "K" and not self.parallel and hasattr(b, "ln2") else b.ln1
        return _gain_of(ln)

    def embedding_sets(self):
        tok = self.tokenizer
        label = (lambda i: tok.decode([i])) if tok is not None else (lambda i: f"#{i}")
        W_E, W_U = self.model.W_E, self.model.W_U  # [d_vocab, d_model], [d_model, d_vocab]
        return {
            "token_in": EmbeddingSet("token_in", W_E.detach(), LazyLabels(W_E.shape[0], label), "in"),
            "token_out": EmbeddingSet("token_out", W_U.detach().T, LazyLabels(W_U.shape[1], label), "out"),
        }

    def hook_module(self, block, path):
        """A TL hook point by its hook_dict name (`blocks.{i}.` + path), else the module at that path."""
        hp = self.model.hook_dict
        for p in (path,) if isinstance(path, str) else path:
            name = p if block is None else f"blocks.{block}.{p}"
            if name in hp:
                return hp[name]
        return super().hook_module(block, path)


def _gain_of(ln):
    """An object whose `.weight` is the LayerNorm gain the forward uses (None when TL folded it away)."""
    if hasattr(ln, "original_component"):  # bridge: the HF LayerNorm it wraps
        return ln.original_component
    w = getattr(ln, "w", None)  # HookedTransformer's LayerNorm stores its gain as `w`; LayerNormPre has none
    return SimpleNamespace(weight=w)
