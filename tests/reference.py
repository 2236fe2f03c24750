"""Independent float64 references: weight matrices read off the HF modules by applying them to the identity.

Nothing here goes through the adapters: a linear module applied to the identity (minus its
bias) *is* its `[d_in, d_out]` matrix in the row-vector convention, whatever layout it stores.
Heads are split the way HF's forward splits them (`.view(..., n_heads, d_head)`).
"""
from __future__ import annotations

import copy

import numpy as np
import torch


def _matrix(module, d_in: int) -> np.ndarray:
    with torch.no_grad():
        eye = torch.eye(d_in, dtype=torch.float64)
        return (module(eye) - module(torch.zeros(1, d_in, dtype=torch.float64))).numpy()


def reference_weights(model, block: int) -> dict:
    """K, V and per-head W_Q, W_K, W_V, W_O of one block as float64 numpy arrays."""
    m = copy.deepcopy(model).double()
    name = type(m).__name__
    body = m.encoder if name == "DecisionTransformerModel" else getattr(m, "transformer", m)
    b = body.h[block]
    d = b.ln_1.normalized_shape[0]
    if name.startswith("GPTJ"):
        K, V = _matrix(b.mlp.fc_in, d), _matrix(b.mlp.fc_out, b.mlp.fc_in.out_features)
        q, k, v = (_matrix(getattr(b.attn, p), d) for p in ("q_proj", "k_proj", "v_proj"))
        o = _matrix(b.attn.out_proj, d)
        H = b.attn.num_attention_heads
    else:
        K, V = _matrix(b.mlp.c_fc, d), _matrix(b.mlp.c_proj, b.mlp.c_fc.nf)
        q, k, v = np.split(_matrix(b.attn.c_attn, d), 3, axis=1)
        o = _matrix(b.attn.c_proj, d)
        H = b.attn.num_heads
    dh = d // H
    cols = lambda w: [w[:, h * dh:(h + 1) * dh] for h in range(H)]  # noqa: E731
    rows = [o[h * dh:(h + 1) * dh, :] for h in range(H)]  # merged heads are concatenated in order
    return {"K": K, "V": V, "W_Q": cols(q), "W_K": cols(k), "W_V": cols(v), "W_O": rows,
            "ln_1": b.ln_1.weight.detach().numpy().copy(),
            "ln_2": getattr(b, "ln_2", b.ln_1).weight.detach().numpy().copy()}


def reference_matrix(model, block: int, weight: str, head: int | None = None, r: dict | None = None) -> np.ndarray:
    """The dense float64 matrix of K, V, or one head's OV (W_V W_O) or QK (W_Q W_K^T).

    Pass `r=reference_weights(model, block)` to reuse one reading of the block.
    """
    r = reference_weights(model, block) if r is None else r
    if weight in ("K", "V"):
        return r[weight]
    if weight == "OV":
        return r["W_V"][head] @ r["W_O"][head]
    return r["W_Q"][head] @ r["W_K"][head].T
