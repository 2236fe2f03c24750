"""GPT-2 (`GPT2LMHeadModel`, `GPT2Model`): HF Conv1D weights are already stored `[in, out]`."""
from __future__ import annotations

from einops import rearrange

from adapters.base import Adapter, EmbeddingSet, LazyLabels
from adapters.registry import register


class GPT2Blocks(Adapter):
    """Weights of GPT-2-style blocks (`ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj`).

    Shared by GPT-2 and the decision transformer, whose encoder is a GPT-2.
    """

    hook_table = {
        "embed": ("drop", "post"),  # token (+ position) embeddings after dropout: the stream entering block 0
        "resid_pre": ("", "pre"),
        "attn_out": ("attn", "post"),
        "mlp_in": ("mlp", "pre"),
        "mlp_hidden": ("mlp.act", "post"),
        "mlp_out": ("mlp", "post"),
        "resid_post": ("", "post"),
        "final": ("ln_f", "post"),
    }

    def _declare(self, n_layer: int, n_head: int, d_model: int, n_inner: int | None) -> None:
        self.n_blocks = n_layer
        self.n_heads = n_head
        self.d_model = d_model
        self.d_head = d_model // n_head
        self.d_mlp = n_inner if n_inner is not None else 4 * d_model  # HF GPT-2's default inner size

    def mlp_in(self, block):
        return self.blocks()[block].mlp.c_fc.weight  # Conv1D: [d_model, d_mlp]

    def mlp_out(self, block):
        return self.blocks()[block].mlp.c_proj.weight  # Conv1D: [d_mlp, d_model]

    def attn_weights(self, block):
        attn = self.blocks()[block].attn
        d, h = self.d_model, self.n_heads
        # c_attn is fused [d_model, 3*d_model]: columns are Q | K | V, each split into heads.
        qkv = attn.c_attn.weight
        split = {n: _view(qkv[:, i * d:(i + 1) * d], "d (h dh) -> h d dh", h=h)
                 for i, n in enumerate(("W_Q", "W_K", "W_V"))}
        # c_proj is [d_model(in), d_model(out)]: head h owns rows h*d_head:(h+1)*d_head.
        split["W_O"] = _view(attn.c_proj.weight, "(h dh) d -> h dh d", h=h)
        return split

    def ln_before(self, block, weight):
        b = self.blocks()[block]
        return {"K": b.ln_2, "OV": b.ln_1, "QK": b.ln_1, "V": None}[weight]



def _view(weight, pattern: str, **sizes):
    """`einops.rearrange` that must return a view: edits through it have to reach the parameter."""
    out = rearrange(weight, pattern, **sizes)
    if out.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr():
        raise AssertionError(f"{pattern} made a copy of the weight; a patch through it would change nothing")
    return out


@register
class GPT2Adapter(GPT2Blocks):
    """GPT-2 language models; token_in is `wte`, token_out the unembedding (tied to `wte` in GPT-2)."""

    model_classes = ("GPT2LMHeadModel", "GPT2Model")

    def __init__(self, model):
        super().__init__(model)
        c = model.config
        self._declare(c.n_layer, c.n_head, c.n_embd, c.n_inner)
        self._body = model.transformer if hasattr(model, "transformer") else model

    def blocks(self):
        return self._body.h

    def _token_labels(self, n):
        tok = self.tokenizer
        return LazyLabels(n, (lambda i: tok.decode([i])) if tok is not None else (lambda i: f"#{i}"))

    def embedding_sets(self):
        wte = self._body.wte.weight
        sets = {"token_in": EmbeddingSet("token_in", wte.detach(), self._token_labels(wte.shape[0]), "in")}
        head = getattr(self.model, "lm_head", None)
        if head is not None:
            w = head.weight  # nn.Linear [vocab, d_model]: rows are already the unembedding vectors
        elif getattr(self.model.config, "tie_word_embeddings", True):
            w = wte  # a bare GPT2Model has no head; GPT-2 ties its unembedding to wte
        else:
            w = None
        if w is not None:
            sets["token_out"] = EmbeddingSet("token_out", w.detach(), self._token_labels(w.shape[0]), "out")
        return sets

    def hook_root(self):
        return self._body

