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

Lanes: built with `edits=` (a `LaneEdits`), a forward takes `lanes=` [B], each row's edit index
(-1 = unedited), and adds each edited row's low-rank delta `(x @ L_e) @ R_e` to the output of
every Conv1D it changes (surgery/behaviour/lanes.py), grouped per parameter: the rows of the
lanes that edit the parameter are gathered, multiplied by their stacked L and R in two bmm's and
added back. In the folded last block a delta to c_attn is applied term by term (see
`_last_block`). Rows with lane -1 go through exactly the arithmetic of a forward without lanes
(bitwise); without any edited row the forward IS that forward, no extra work.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from surgery.errors import SurgeryError

if TYPE_CHECKING:
    from surgery.behaviour.lanes import LaneEdits

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

    def __init__(self, model, dtype: torch.dtype = torch.float32, fused: bool | None = None,
                 edits: "LaneEdits | None" = None):
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
        self.edits = edits
        self._stacks = {} if edits is None else self._lane_stacks(edits)

    def _lane_stacks(self, edits: "LaneEdits") -> dict:
        """id(parameter) -> the edits' stacked deltas to it, for every Conv1D weight some edit changes."""
        if edits.model is not self.model:
            raise SurgeryError("the lane edits were computed for another model object than this policy's")
        convs = {}
        for block in self.model.encoder.h:
            for conv in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                convs[id(conv.weight)] = conv.weight
        stacks = {}
        for name, p in edits.touched().items():
            if id(p) not in convs:
                raise SurgeryError(f"an edit changes {name}, which the lane forward does not apply; lanes edit the "
                                   "blocks' Conv1D weights (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)")
            stacks[id(p)] = edits.stacked(name, self.dtype, self.device)
        return stacks

    def _lane_rows(self, lanes, B: int) -> "_LaneRows | None":
        """Per edited parameter, the rows whose lane edits it and their deltas; None when no row has an edit."""
        lanes = torch.as_tensor(lanes, dtype=torch.long).cpu()
        n = 0 if self.edits is None else len(self.edits)
        if lanes.shape != (B,):
            raise SurgeryError(f"lanes must hold one edit index per row: shape ({B},), got {tuple(lanes.shape)}")
        if B and (int(lanes.min()) < -1 or int(lanes.max()) >= n):
            valid = f"-1 (unedited) or 0..{n - 1} (the policy's {n} edits)" if n else "-1 (this policy has no edits)"
            raise SurgeryError(f"lane edit indices must be {valid}, got {lanes.min().item()}..{lanes.max().item()}")
        if not B or int(lanes.max()) < 0:
            return None
        self.edits.check_current()
        rows = {}
        for pid, st in self._stacks.items():
            slot = st.slot[lanes.to(st.slot.device)]  # [B]: each row's index into the stack, -1 = leaves it alone
            sel = (slot >= 0).nonzero().squeeze(1)
            if len(sel):
                idx = slot[sel]
                rows[pid] = (sel, st.left[idx], st.right[idx])  # [n], [n, d_in, r], [n, r, d_out]
        return _LaneRows(B, rows) if rows else None

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

    def _conv1d(self, x: torch.Tensor, conv, act: str = "none", add: torch.Tensor | None = None,
                lanes: "_LaneRows | None" = None):
        """HF Conv1D (weight [in, out]) on rows x, optionally ReLU'd or added to a residual, plus lane deltas."""
        delta = None if lanes is None else lanes.get(conv.weight)
        if delta is not None:  # the delta enters before the activation
            y = self._conv1d(x, conv, add=add)
            lanes.add(y, x, delta)
            return F.relu_(y) if act == "relu" else y
        if self.fused:
            w, b = self._w(conv.weight, transpose=True), self._w(conv.bias)
            if add is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, add, w, b, "add")
            return torch.ops.mkldnn._linear_pointwise(x, w, b, act, [], "")
        w, b = self._w(conv.weight), self._w(conv.bias)
        y = torch.addmm(b, x, w) if add is None else torch.addmm(add + b, x, w)
        return F.relu_(y) if act == "relu" else y

    @torch.no_grad()
    def __call__(self, states, actions, returns_to_go, timesteps, attention_mask=None,
                 out_dtype: torch.dtype = torch.float32, lanes=None) -> torch.Tensor:
        """Outputs at the last state token of windows shaped as HF's forward takes them: [B, act_dim].

        states [B, L, state_dim], actions [B, L, act_dim] or [B, L-1, act_dim] (a_t is never read),
        returns_to_go [B, L, 1], timesteps [B, L] (or [L], shared by all rows),
        attention_mask [B, L] (1 = real, 0 = left padding) or None,
        lanes [B]: each row's edit, an index into the policy's `edits` or -1 (unedited); None = all -1.
        """
        m, w, dt, dev = self.model, self._w, self.dtype, self.device
        states, actions, returns_to_go = (t.to(dev, dt) for t in (states, actions, returns_to_go))
        B, L, _ = states.shape
        lane = None if lanes is None else self._lane_rows(lanes, B)
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
            x = self._block(block, x, B, S, layer, bias, lane)
        x = self._last_block(blocks[-1], x, B, S, len(blocks) - 1, last_bias, lane)
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

    def _mlp(self, block, x: torch.Tensor, lanes=None) -> torch.Tensor:
        """x + c_proj(act(c_fc(ln_2(x)))) on rows [N, H]."""
        w = self._w
        h = F.layer_norm(x, (self.hidden,), w(block.ln_2.weight), w(block.ln_2.bias), self.eps)
        if isinstance(block.mlp.act, torch.nn.ReLU):
            h = self._conv1d(h, block.mlp.c_fc, act="relu", lanes=lanes)
        else:
            h = block.mlp.act(self._conv1d(h, block.mlp.c_fc, lanes=lanes))
        return self._conv1d(h, block.mlp.c_proj, add=x, lanes=lanes)

    def _block(self, block, x: torch.Tensor, B: int, S: int, layer: int, bias, lanes=None) -> torch.Tensor:
        """A full GPT-2 block over every position (causal); x is [B*S, H]."""
        w, H = self._w, self.hidden
        h = F.layer_norm(x, (H,), w(block.ln_1.weight), w(block.ln_1.bias), self.eps)
        q, k, v = (self._heads(t, B, S) for t in self._conv1d(h, block.attn.c_attn, lanes=lanes).split(H, dim=1))
        a = self._attend(q, k, v, bias, self._scaling(layer))
        a = a.transpose(1, 2).reshape(B * S, H)
        x = self._conv1d(a, block.attn.c_proj, add=x, lanes=lanes)
        return self._mlp(block, x, lanes)

    def _last_block(self, block, x: torch.Tensor, B: int, S: int, layer: int, last_bias, lanes=None) -> torch.Tensor:
        """The last block at the last (state) token only.

        Keys and values are never formed: with h = ln_1(x), q . (h_j Wk + bk) = h_j . (Wk q) + q . bk, where
        the last term is the same for every j and cancels in the softmax; and sum_j p_j (h_j Wv + bv) =
        (sum_j p_j h_j) Wv + bv because the p_j sum to one. Equal up to rounding, and S times less work.

        A lane's delta L R to c_attn (W + L R, L [H, r], R [r, 3H] = Rq | Rk | Rv) is applied term by term:
        q += (h_last L) Rq; Wk q += L (Rk q) per head, which changes every score h_j . (Wk q) exactly as
        the edited keys would; and the attention output += ((sum_j p_j h_j) L) Rv per head.
        """
        w, H, nh, hd = self._w, self.hidden, self.heads, self.head_dim
        h = F.layer_norm(x, (H,), w(block.ln_1.weight), w(block.ln_1.bias), self.eps).view(B, S, H)
        W, b = w(block.attn.c_attn.weight), w(block.attn.c_attn.bias)  # [H, 3H]: q | k | v columns
        delta = None if lanes is None else lanes.get(block.attn.c_attn.weight)
        q = torch.addmm(b[:H], h[:, -1], W[:, :H])
        if delta is not None:
            sel, L, R = delta  # [n], [n, H, r], [n, r, 3H]
            n, r = L.shape[0], L.shape[2]
            Rq, Rk, Rv = (t.reshape(n, r, nh, hd) for t in R.split(H, dim=2))
            q.index_add_(0, sel, torch.bmm(torch.bmm(h[sel, -1:], L), R[:, :, :H]).view(n, H))
        q = q.view(B, nh, hd)
        q_in = torch.einsum("bnd,ind->bni", q, W[:, H:2 * H].view(H, nh, hd))  # Wk q, per head: [B, nh, H]
        if delta is not None:
            rk_q = torch.einsum("nhd,nrhd->nhr", q[sel], Rk)  # Rk q per head: [n, nh, r]
            q_in.index_add_(0, sel, torch.bmm(rk_q, L.transpose(1, 2)))  # + L (Rk q): [n, nh, H]
        scores = torch.bmm(q_in, h.transpose(1, 2)).mul_(self._scaling(layer))  # [B, nh, S]
        if last_bias is not None:
            scores = scores.add_(last_bias.view(B, 1, S))
        p = torch.softmax(scores, dim=-1, dtype=self._softmax_dtype).to(h.dtype)
        mixed = torch.bmm(p, h)  # sum_j p_j h_j per head: [B, nh, H]
        a = torch.einsum("bni,ind->bnd", mixed, W[:, 2 * H:].view(H, nh, hd)).reshape(B, H) + b[2 * H:]
        if delta is not None:
            mixed_l = torch.bmm(mixed[sel], L)  # (sum_j p_j h_j) L per head: [n, nh, r]
            a.index_add_(0, sel, torch.einsum("nhr,nrhd->nhd", mixed_l, Rv).reshape(n, H))
        x = self._conv1d(a, block.attn.c_proj, add=x.view(B, S, H)[:, -1], lanes=lanes)
        return self._mlp(block, x, lanes)


class _LaneRows:
    """One forward's lanes: per edited parameter, (rows that edit it [n], their L [n, d_in, r], R [n, r, d_out])."""

    def __init__(self, batch: int, rows: dict):
        self.batch, self.rows = batch, rows

    def get(self, param: torch.Tensor):
        return self.rows.get(id(param))

    def add(self, y: torch.Tensor, x: torch.Tensor, delta) -> None:
        """y += (x @ L) @ R on the selected rows; x [B*T, d_in] and y [B*T, d_out] hold T tokens per row."""
        sel, L, R = delta
        B = self.batch
        xs = x.reshape(B, -1, x.shape[-1])[sel]  # [n, T, d_in]
        y.view(B, -1, y.shape[-1]).index_add_(0, sel, torch.bmm(torch.bmm(xs, L), R))  # + [n, T, d_out]


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
