"""A batched decision-transformer action forward that computes only what the chosen action needs.

Same arithmetic as `transformers.DecisionTransformerModel.forward` in eval mode (no dropout),
read from the module's own live parameters, but:
- the trailing action token of the window (a_t, not chosen yet) is dropped: under causal
  attention no earlier token sees it;
- the last block runs only at the last state token, and even its keys and values are folded
  into the query and the attention output (see `_last_block`);
- no state or return heads.
Derived weights (transposed copies for the fused kernels, casts to bfloat16) are cached per
parameter, keyed on its identity and version counter, so an in-place edit (a `patch`) is seen
at the next forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from surgery.errors import SurgeryError

__all__ = ["DTPolicy", "forward_flops"]


def _onednn_linear_works() -> bool:
    """Whether torch's fused oneDNN linear (bias, ReLU and residual add in one kernel) runs here."""
    try:
        x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
        fused = torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
        ok = torch.allclose(fused, F.linear(x, w, b).relu(), atol=1e-5)
        other = torch.randn(3, 5)
        got = torch.ops.mkldnn._linear_pointwise.binary(x, other, w, b, "add")
        return ok and torch.allclose(got, F.linear(x, w, b) + other, atol=1e-5)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


# oneDNN is 2-2.5x faster than MKL's float32 GEMM on AMD CPUs (measured: benchmarks/rollout_throughput.py)
# and fuses bias, activation and residual; where torch lacks it the plain kernels give the same values.
_ONEDNN = torch.backends.mkldnn.is_available() and _onednn_linear_works()


class DTPolicy:
    """Batched action outputs (tanh'd actions or logits) of a DecisionTransformerModel."""

    def __init__(self, model, dtype: torch.dtype = torch.float32, fused: bool | None = None):
        if not dtype.is_floating_point:
            raise SurgeryError(f"dtype must be a floating-point torch dtype, got {dtype}")
        config = model.config
        if getattr(config, "add_cross_attention", False):
            raise SurgeryError("decision transformers with cross-attention are not supported")
        self.model = model
        self.dtype = dtype
        self.hidden = config.hidden_size
        self.heads = config.n_head
        self.head_dim = self.hidden // self.heads
        self.eps = config.layer_norm_epsilon
        self.action_tanh = bool(config.action_tanh)
        self.device = model.embed_timestep.weight.device
        on_cpu = self.device.type == "cpu"
        self.fused = (_ONEDNN and on_cpu and dtype in (torch.float32, torch.bfloat16)) if fused is None else fused
        self._softmax_dtype = torch.promote_types(dtype, torch.float32)
        self._cache: dict[tuple[int, bool], tuple[torch.Tensor, int, torch.Tensor]] = {}

    def _scaling(self, layer: int) -> float:
        config = self.model.config
        scale = self.head_dim ** -0.5 if config.scale_attn_weights else 1.0
        return scale / (layer + 1) if config.scale_attn_by_inverse_layer_idx else scale

    def _w(self, p: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """The parameter in the compute dtype (transposed if asked), cached and checked against its version."""
        if p.dtype == self.dtype and not transpose:
            return p.detach()
        key = (id(p), transpose)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is p and hit[1] == p._version:
            return hit[2]
        derived = p.detach().to(self.dtype)
        derived = derived.t().contiguous() if transpose else derived
        self._cache[key] = (p, p._version, derived)
        return derived

    def _conv1d(self, x: torch.Tensor, conv, act: str = "none", add: torch.Tensor | None = None, cols=None):
        """HF Conv1D (weight [in, out]) on rows x, optionally ReLU'd or added to a residual; cols slices outputs."""
        if self.fused:
            w, b = self._w(conv.weight, transpose=True), self._w(conv.bias)
            if cols is not None:
                w, b = w[cols], b[cols]
            if add is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, add, w, b, "add")
            return torch.ops.mkldnn._linear_pointwise(x, w, b, act, [], "")
        w, b = self._w(conv.weight), self._w(conv.bias)
        if cols is not None:
            w, b = w[:, cols], b[cols]
        y = torch.addmm(b, x, w) if add is None else torch.addmm(add + b, x, w)
        return F.relu_(y) if act == "relu" else y

    @torch.no_grad()
    def __call__(self, states, actions, returns_to_go, timesteps, attention_mask=None,
                 out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Outputs at the last state token of windows shaped as HF's forward takes them: [B, act_dim].

        states [B, L, state_dim], actions [B, L, act_dim] or [B, L-1, act_dim] (a_t is never read),
        returns_to_go [B, L, 1], timesteps [B, L] (or [L], shared by all rows),
        attention_mask [B, L] (1 = real, 0 = left padding) or None.
        """
        m, w, dt, dev = self.model, self._w, self.dtype, self.device
        states, actions, returns_to_go = (t.to(dev, dt) for t in (states, actions, returns_to_go))
        B, L, _ = states.shape
        H, S = self.hidden, 3 * L - 1
        time = F.embedding(timesteps.to(dev), w(m.embed_timestep.weight))
        tokens = torch.empty(B, L, 3, H, dtype=dt, device=dev)
        tokens[:, :, 0] = F.linear(returns_to_go, w(m.embed_return.weight), w(m.embed_return.bias)) + time
        tokens[:, :, 1] = F.linear(states, w(m.embed_state.weight), w(m.embed_state.bias)) + time
        tokens[:, : L - 1, 2] = (
            F.linear(actions[:, : L - 1], w(m.embed_action.weight), w(m.embed_action.bias))
            + time[..., : L - 1, :]
        )
        # HF order: embed_ln on the stacked tokens, then the encoder adds wpe at position 0 to every token.
        enc = m.encoder
        x = F.layer_norm(tokens.view(B, 3 * L, H)[:, :S], (H,), w(m.embed_ln.weight), w(m.embed_ln.bias), self.eps)
        x = (x + w(enc.wpe.weight)[0]).view(B * S, H)

        bias = last_bias = None
        if attention_mask is not None:
            keys = attention_mask.to(dev, torch.bool).repeat_interleave(3, dim=1)[:, :S]
            causal = torch.ones(S, S, dtype=torch.bool, device=dev).tril()
            # A padded query may also see itself, so no softmax row is empty (NaN); no real token reads it.
            allowed = ((causal & keys[:, None, :]) | torch.eye(S, dtype=torch.bool, device=dev))[:, None]
            bias = torch.zeros(allowed.shape, dtype=dt, device=dev).masked_fill_(~allowed, float("-inf"))
            last_bias = bias[:, :, -1:, :]
        else:
            bias = torch.full((S, S), float("-inf"), dtype=dt, device=dev).triu_(1)

        blocks = list(enc.h)
        for layer, block in enumerate(blocks[:-1]):
            x = self._block(block, x, B, S, layer, bias)
        x = self._last_block(blocks[-1], x, B, S, len(blocks) - 1, last_bias)
        x = F.layer_norm(x, (H,), w(enc.ln_f.weight), w(enc.ln_f.bias), self.eps)
        head = m.predict_action[0]
        out = F.linear(x, w(head.weight), w(head.bias))
        if self.action_tanh:
            out = torch.tanh(out)
        return out.to(out_dtype)

    def _heads(self, t: torch.Tensor, B: int, S: int) -> torch.Tensor:
        return t.reshape(B, S, self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, q, k, v, bias, scale) -> torch.Tensor:
        """softmax(q k^T * scale + bias) v; explicit products beat CPU SDPA at these sizes (59 tokens)."""
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
        if bias is not None:
            scores = scores.add_(bias)
        # softmax in at least float32: more exact, and 4x faster than bfloat16's on CPU.
        return torch.matmul(torch.softmax(scores, dim=-1, dtype=self._softmax_dtype).to(v.dtype), v)

    def _mlp(self, block, x: torch.Tensor) -> torch.Tensor:
        """x + c_proj(act(c_fc(ln_2(x)))) on rows [N, H]."""
        w = self._w
        h = F.layer_norm(x, (self.hidden,), w(block.ln_2.weight), w(block.ln_2.bias), self.eps)
        if isinstance(block.mlp.act, torch.nn.ReLU):
            h = self._conv1d(h, block.mlp.c_fc, act="relu")
        else:
            h = block.mlp.act(self._conv1d(h, block.mlp.c_fc))
        return self._conv1d(h, block.mlp.c_proj, add=x)

    def _block(self, block, x: torch.Tensor, B: int, S: int, layer: int, bias) -> torch.Tensor:
        """A full GPT-2 block over every position (causal); x is [B*S, H]."""
        w, H = self._w, self.hidden
        h = F.layer_norm(x, (H,), w(block.ln_1.weight), w(block.ln_1.bias), self.eps)
        q, k, v = (self._heads(t, B, S) for t in self._conv1d(h, block.attn.c_attn).split(H, dim=1))
        a = self._attend(q, k, v, bias, self._scaling(layer))
        a = a.transpose(1, 2).reshape(B * S, H)
        x = self._conv1d(a, block.attn.c_proj, add=x)
        return self._mlp(block, x)

    def _last_block(self, block, x: torch.Tensor, B: int, S: int, layer: int, last_bias) -> torch.Tensor:
        """The last block at the last (state) token only.

        Keys and values are never formed: with h = ln_1(x), q . (h_j Wk + bk) = h_j . (Wk q) + q . bk, where
        the last term is the same for every j and cancels in the softmax; and sum_j p_j (h_j Wv + bv) =
        (sum_j p_j h_j) Wv + bv because the p_j sum to one. Equal up to rounding, and S times less work.
        """
        w, H, nh, hd = self._w, self.hidden, self.heads, self.head_dim
        h = F.layer_norm(x, (H,), w(block.ln_1.weight), w(block.ln_1.bias), self.eps).view(B, S, H)
        W, b = w(block.attn.c_attn.weight), w(block.attn.c_attn.bias)  # [H, 3H]: q | k | v columns
        q = torch.addmm(b[:H], h[:, -1], W[:, :H]).view(B, nh, hd)
        q_in = torch.einsum("bnd,ind->bni", q, W[:, H:2 * H].view(H, nh, hd))  # Wk q, per head: [B, nh, H]
        scores = torch.bmm(q_in, h.transpose(1, 2)).mul_(self._scaling(layer))  # [B, nh, S]
        if last_bias is not None:
            scores = scores.add_(last_bias.view(B, 1, S))
        p = torch.softmax(scores, dim=-1, dtype=self._softmax_dtype).to(h.dtype)
        mixed = torch.bmm(p, h)  # sum_j p_j h_j per head: [B, nh, H]
        a = torch.einsum("bni,ind->bnd", mixed, W[:, 2 * H:].view(H, nh, hd)).reshape(B, H) + b[2 * H:]
        x = self._conv1d(a, block.attn.c_proj, add=x.view(B, S, H)[:, -1])
        return self._mlp(block, x)


def forward_flops(config, context_len: int) -> dict[str, int]:
    """Floating-point operations (2 per multiply-add) of one action forward, from the model's shapes.

    "linear": the GPT-2 blocks' matrix products in HF's full forward over 3*context_len tokens;
    "attention": its q k^T and p v products, dense over all token pairs;
    "policy_linear", "policy_attention": the same for what DTPolicy computes (trailing action token
    dropped; the last block at the last state token, without keys and values).
    Embeddings, layer norms, softmax and heads are small and left out.
    """
    H, layers = config.hidden_size, config.n_layer
    inner = config.n_inner or 4 * H
    per_token = H * 3 * H + H * H + 2 * H * inner  # c_attn, attention c_proj, c_fc, MLP c_proj
    S_full, S = 3 * context_len, 3 * context_len - 1
    last_linear = 4 * H * H + 2 * H * inner  # q, Wk q, Wv, c_proj, MLP at one token
    return {
        "linear": 2 * layers * S_full * per_token,
        "attention": 2 * layers * 2 * S_full * S_full * H,
        "policy_linear": 2 * ((layers - 1) * S * per_token + last_linear),
        "policy_attention": 2 * ((layers - 1) * 2 * S * S * H + 2 * S * H * config.n_head),
    }
